"""The container image's promises, read from the Dockerfile and compose.yaml themselves:
multi-stage, a non-root user, state in one volume, a HEALTHCHECK on the probe listener's /healthz,
configuration only from the environment (no secret baked in), and compose wired to PostgreSQL."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from bot.config import DEFAULT_PROBE_PORT, Settings

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {
    name.upper()
    for name, info in Settings.model_fields.items()
    if SecretStr in typing.get_args(info.annotation) or info.annotation is SecretStr
} | {"DATABASE_URL"}  # a URL with the database password in it
SETTINGS = {name.upper() for name in Settings.model_fields}
RUNTIME_ENV = {"PATH", "HOME", "MPLCONFIGDIR", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _stages(text: str) -> list[Stage]:
    """Instructions per stage: continuation lines joined, comments and directives left out."""
    logical = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))
    )
    stages: list[Stage] = []
    for line in filter(None, (ln.strip() for ln in logical.splitlines())):
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            parts = args.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) == 3 else None))
        elif stages:
            stages[-1].instructions.append((keyword.upper(), args.strip()))
    return stages


def _env(stage: Stage) -> dict[str, str]:
    pairs = [p for args in stage.all("ENV") for p in shlex.split(args)]
    return dict(p.split("=", 1) for p in pairs)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return _stages((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, typing.Any]:
    loaded = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_image_is_built_in_one_stage_and_run_from_another(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    build, final = stages[0], stages[-1]
    assert build.name and final.name is None
    copies = final.all("COPY")
    assert copies and all(c.startswith(f"--from={build.name} ") for c in copies)
    assert not final.all("RUN") or all("uv" not in r and "pip" not in r for r in final.all("RUN"))


def test_it_runs_as_a_non_root_user(stages: list[Stage]) -> None:
    (user,) = stages[-1].all("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: Kubernetes' runAsNonRoot can verify it


def test_state_is_one_volume_the_data_dir_and_the_only_place_it_writes(stages: list[Stage]) -> None:
    final = stages[-1]
    (volume,) = final.all("VOLUME")
    assert json.loads(volume) == ["/data"]
    env = _env(final)
    assert env["BATCHAI_DATA_DIR"] == "/data"
    assert env["HOME"].startswith("/data") and env["MPLCONFIGDIR"].startswith("/data")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # a read-only root filesystem: no .pyc writes
    (chown,) = [r for r in final.all("RUN") if "chown" in r]
    assert final.all("USER")[0] in chown and "/data" in chown


def test_the_healthcheck_asks_the_probe_listener_for_healthz(stages: list[Stage]) -> None:
    final = stages[-1]
    (check,) = final.all("HEALTHCHECK")
    assert "/healthz" in check and "PROBE_PORT" in check and str(DEFAULT_PROBE_PORT) in check
    env = _env(final)
    assert env["PROBE_PORT"] == str(DEFAULT_PROBE_PORT) and env["PROBE_HOST"] == "0.0.0.0"
    exposed = {p for args in final.all("EXPOSE") for p in args.split()}
    assert {env["PORT"], env["PROBE_PORT"]} <= exposed


def test_configuration_is_the_environment_and_no_secret_is_baked_in(stages: list[Stage]) -> None:
    for stage in stages:
        env = _env(stage)
        args = {a.split("=", 1)[0] for a in stage.all("ARG")}
        assert not (env.keys() | args) & SECRETS, stage.base
        unknown = env.keys() - SETTINGS - RUNTIME_ENV
        assert all(k.startswith(("UV_", "PIP_")) for k in unknown), unknown  # build tools only
    final = stages[-1]
    assert json.loads(final.all("ENTRYPOINT")[0]) == ["batchai-bot"]
    assert final.all("WORKDIR") == ["/opt/bot"]  # no .env there: nothing is read from a file


def test_the_build_context_holds_no_state_secret_or_venv() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*"  # everything is left out, then the sources let back in
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "uv.lock",
        "setup.py",
        "README.md",
        "bot",
        "handlers",
        "services",
        "manifests",
        "examples",
    }
    assert "**/.env" in rules


def test_compose_starts_the_bot_on_postgres_once_it_is_healthy(
    compose: dict[str, typing.Any], stages: list[Stage]
) -> None:
    db, bot = compose["services"]["db"], compose["services"]["bot"]
    assert db["image"].startswith("postgres:") and db["healthcheck"]["test"][:2] == [
        "CMD",
        "pg_isready",
    ]
    assert bot["depends_on"]["db"]["condition"] == "service_healthy"
    url = bot["environment"]["DATABASE_URL"]
    assert re.fullmatch(
        r"postgresql\+asyncpg://batchai:\$\{POSTGRES_PASSWORD:\?[^}]*\}@db:5432/batchai", url
    )
    assert Settings(database_url=url.replace("${", "").replace("}", "")).db_url.startswith(
        "postgresql+asyncpg://"
    )
    assert db["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_compose_runs_the_image_as_its_dockerfile_promises(
    compose: dict[str, typing.Any], stages: list[Stage]
) -> None:
    bot = compose["services"]["bot"]
    final = stages[-1]
    assert bot["read_only"] is True and bot["tmpfs"] == ["/tmp"]
    assert bot["user"] == final.all("USER")[0]
    assert bot["volumes"] == ["data:/data"] and "data" in compose["volumes"]
    assert bot["cap_drop"] == ["ALL"]
    ports = {p.split(":")[-1] for p in bot["ports"]}
    assert ports == {_env(final)["PORT"], _env(final)["PROBE_PORT"]}
    assert all(p.startswith("127.0.0.1:") for p in bot["ports"])  # not on every interface
    for name, value in bot["environment"].items():
        assert name in SETTINGS, name
        if name in SECRETS:  # from the caller's shell, never written here
            assert value is None or value.startswith("${") or "${POSTGRES_PASSWORD" in value


def test_the_build_script_makes_its_base_with_debootstrap_and_is_valid_sh() -> None:
    script = ROOT / "deploy" / "image" / "build.sh"
    assert script.stat().st_mode & 0o111
    text = script.read_text()
    assert "debootstrap" in text and " import " in text and " build " in text
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=30)
