# batchai-bot: the bot in a venv on Debian's python3, run as a non-root user with a read-only root
# filesystem; all state lives in the /data volume, all configuration comes from the environment.
# Build: deploy/image/build.sh (a debootstrap base, no registry), or wherever a registry answers:
#   docker build --build-arg BASE=python:3.11-slim-bookworm -t batchai-bot .
# BASE must have python3 (3.11+) with its venv module at /usr/bin/python3.
ARG BASE=localhost/debian-python:bookworm

FROM ${BASE} AS build
# uv, pinned as in the Makefile, installs exactly uv.lock: the runtime dependencies, the bot as a
# wheel (not editable) and UV_EXTRAS (e.g. "--extra examples": the digits example's scikit-learn)
ARG UV_VERSION=0.9.30
ARG UV_EXTRAS=""
ENV UV_PROJECT_ENVIRONMENT=/opt/bot \
    UV_PYTHON=python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The build reaches PyPI; behind a TLS-inspecting proxy give its CA as the build secret `ca`
# (deploy/image/build.sh: CA_BUNDLE=...): mounted for these steps only, in no layer.
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/uv && /opt/uv/bin/pip install --quiet "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml uv.lock ./
# hadolint ignore=SC2086
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi \
    && /opt/uv/bin/uv sync --frozen --no-install-project --no-cache ${UV_EXTRAS}
COPY setup.py README.md ./
COPY bot bot
COPY handlers handlers
COPY services services
COPY manifests manifests
COPY examples examples
# hadolint ignore=SC2086
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi \
    && /opt/uv/bin/uv sync --frozen --no-editable --no-cache ${UV_EXTRAS} \
    && /opt/bot/bin/batchai-bot --version

FROM ${BASE}
COPY --from=build /opt/bot /opt/bot
# No .env is read from WORKDIR (there is none); HOME and the matplotlib cache go to the volume.
ENV PATH=/opt/bot/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/data \
    MPLCONFIGDIR=/data/.matplotlib \
    BATCHAI_DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=8080 \
    PROBE_HOST=0.0.0.0 \
    PROBE_PORT=9090
# A numeric user (no passwd entry needed), the owner of the one writable place.
RUN mkdir -p /data && chown 10001:10001 /data && chmod 0700 /data
VOLUME ["/data"]
WORKDIR /opt/bot
USER 10001:10001
EXPOSE 8080 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PROBE_PORT', '9090'), timeout=4)"]
ENTRYPOINT ["batchai-bot"]
CMD ["run"]
