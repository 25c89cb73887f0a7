#!/bin/sh
# Build the batchai-bot image on a machine that reaches no image registry: a Debian base made with
# debootstrap (Debian's mirror is enough), imported as an image, then the Dockerfile built on it.
# Needs root, debootstrap and podman (or docker: ENGINE=docker). Run from anywhere:
#   sudo deploy/image/build.sh              # -> localhost/batchai-bot:latest
# Knobs (environment): ENGINE, SUITE, MIRROR, BASE, IMAGE, WORK, UV_EXTRAS (e.g. "--extra examples"),
# CA_BUNDLE (a CA file the build trusts for PyPI, e.g. a TLS-inspecting proxy's; never in the image).
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ENGINE=${ENGINE:-podman}
SUITE=${SUITE:-bookworm}  # its python3 is 3.11, the oldest the bot supports
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BASE=${BASE:-localhost/debian-python:$SUITE}
IMAGE=${IMAGE:-localhost/batchai-bot:latest}
UV_EXTRAS=${UV_EXTRAS:-}
WORK=${WORK:-$ROOT/build/image}
CA_BUNDLE=${CA_BUNDLE:-}

# podman without a container runtime setup: vfs storage and chroot isolation work almost anywhere
if [ "$ENGINE" = podman ]; then
    run() { podman --storage-driver vfs "$@"; }
    BUILD_OPTS="--isolation chroot --format docker"  # OCI images drop HEALTHCHECK
else
    run() { "$ENGINE" "$@"; }
    BUILD_OPTS=""
fi

if ! run image exists "$BASE" 2>/dev/null; then
    rootfs="$WORK/rootfs-$SUITE"
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    # minbase plus the interpreter both stages need; no compiler: every dependency has a wheel
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$MIRROR"
    # a smaller base: no apt lists, caches, docs or man pages
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -c . | run import --change 'CMD ["/bin/sh"]' - "$BASE"
    rm -rf "$rootfs"
fi

if [ -n "$CA_BUNDLE" ]; then
    BUILD_OPTS="$BUILD_OPTS --secret id=ca,src=$CA_BUNDLE"
fi
# shellcheck disable=SC2086 # BUILD_OPTS is a list of options
run build $BUILD_OPTS --network host --build-arg "BASE=$BASE" --build-arg "UV_EXTRAS=$UV_EXTRAS" \
    -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT"
run image ls "$IMAGE"
