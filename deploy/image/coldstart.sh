#!/bin/sh
# Cold start of the image: seconds from `run` to the first 200 from the probe listener's /healthz,
# with the image's promises on: read-only root filesystem, a tmpfs /tmp, state in a fresh volume;
# and of those, the seconds from the container's start (the engine's StartedAt) on: the bot's own.
#   sudo deploy/image/coldstart.sh [RUNS]       # prints one line per run, then the image size
# Knobs (environment): ENGINE, IMAGE, PROBE_PORT (host network, so pick a free one), RUN_OPTS
# (e.g. "--runtime runc --ulimit nofile=20000:20000 --ulimit nproc=1024:1024" where crun
# cannot set the default limits).
set -eu

ENGINE=${ENGINE:-podman}
IMAGE=${IMAGE:-localhost/batchai-bot:latest}
PROBE_PORT=${PROBE_PORT:-19090}
RUN_OPTS=${RUN_OPTS:-}
RUNS=${1:-3}
if [ "$ENGINE" = podman ]; then
    run() { podman --storage-driver vfs "$@"; }
else
    run() { "$ENGINE" "$@"; }
fi

i=0
while [ "$i" -lt "$RUNS" ]; do
    i=$((i + 1))
    name="batchai-coldstart-$$-$i"
    run volume create "$name" >/dev/null
    start=$(date +%s%N)
    # -i keeps stdin open: without Slack tokens the bot is the console and waits for input
    # shellcheck disable=SC2086 # RUN_OPTS is a list of options
    run run -d -i --name "$name" $RUN_OPTS --read-only --tmpfs /tmp --network host \
        -v "$name:/data" -e PORT=0 -e "PROBE_PORT=$PROBE_PORT" -e LOG_LEVEL=WARNING \
        -e PRICE_REFRESH_HOURS=0 "$IMAGE" run >/dev/null
    until python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PROBE_PORT/healthz', timeout=1)" 2>/dev/null; do
        if [ "$(run inspect -f '{{.State.Running}}' "$name")" != true ]; then
            run logs "$name" >&2
            echo "run $i: the container exited before /healthz answered" >&2
            exit 1
        fi
        sleep 0.05
    done
    end=$(date +%s%N)
    started=$(run inspect -f '{{.State.StartedAt.UnixNano}}' "$name")
    echo "run $i: /healthz 200 after $(python3 -c "print(f'{($end - $start) / 1e9:.2f}')") s," \
        "$(python3 -c "print(f'{($end - $started) / 1e9:.2f}')") s after the container started"
    run rm -f "$name" >/dev/null
    run volume rm "$name" >/dev/null
done
run image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$IMAGE"
