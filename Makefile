# Every target creates .venv first when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Local jobs run with JOB_PYTHON, by default this environment with the examples' extra (sklearn)
JOBS := .venv-jobs
JOBS_STAMP := $(JOBS)/.installed
# uv (pinned, from PyPI) lives in its own small venv: `uv sync` makes .venv exactly the lock.
UV_VERSION := 0.9.30
TOOLS := .tools
UV := $(TOOLS)/bin/uv
export UV_PYTHON_DOWNLOADS := never
# glibc gives every thread (SQLite, file reads) its own malloc arena; two bound them (they held
# ~26 MB in the 100-job stream bench). Not what the 846 MB peak was: README, Performance, Memory.
export MALLOC_ARENA_MAX ?= 2
export UV_PROJECT_ENVIRONMENT := $(VENV)
# checkov (pinned, from PyPI) scans deploy/ offline: its own venv, its dependencies kept out of
# the lock. --skip-download: no API key, no policy download; the checks are the bundled ones.
CHECKOV_VERSION := 3.3.30
CHECKOV := $(TOOLS)/checkov/bin/checkov
CHECKOV_RUN := LOG_LEVEL=ERROR CKV_SKIP_PACKAGE_UPDATE_CHECK=true $(CHECKOV) -d deploy --skip-download --compact --quiet

.PHONY: run test lint lock format bench docs clean

$(UV):
	$(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check 'uv==$(UV_VERSION)'

$(CHECKOV):
	$(PY) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/pip install --quiet --disable-pip-version-check 'checkov==$(CHECKOV_VERSION)'

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra dev --python $(PY)
	touch $(STAMP)

$(JOBS_STAMP): pyproject.toml uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=$(JOBS) $(UV) sync --frozen --extra examples --no-install-project --python $(PY)
	touch $(JOBS_STAMP)

lock: | $(UV)
	$(UV) lock --upgrade --python $(PY)

run: $(STAMP) $(JOBS_STAMP)
	$(BIN)/batchai-bot run

test: $(STAMP) | $(CHECKOV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(CHECKOV_RUN)
	$(BIN)/hadolint Dockerfile
	$(BIN)/pytest

lint: $(STAMP) | $(CHECKOV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(CHECKOV_RUN)
	$(BIN)/hadolint Dockerfile

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

docs: $(STAMP)
	$(BIN)/python docs/update_reference.py

bench: $(STAMP)
	$(BIN)/python bench/tailer_bench.py

clean:
	rm -rf $(VENV) $(JOBS) $(TOOLS) .batchai .pytest_cache .mypy_cache .ruff_cache
