"""The node health check both backends run once per node, after its setup and before any job:
the GPUs the size promises answer (`nvidia-smi -L` lists that many) and every share mount
answers. A node is idle only once it passed; its result file holds `status=ok|failed`,
`gpus=N` and `reason=...` lines (the reason is built from fixed words, counts and the first
line of nvidia-smi's answer, stripped to printable characters)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

HEALTH_FILE = "health"
REASON_LIMIT = 300
CHECK_TIMEOUT_SECONDS = 60  # a driver or a share mount that hangs fails the check, it never stalls


@dataclass(frozen=True)
class Health:
    """One node's check result; `reason` says why it failed (empty when it passed)."""

    ok: bool
    reason: str = ""
    gpus: int | None = None  # GPUs nvidia-smi listed (None: not checked)


def check_lines(*, gpus: int, mounts: Sequence[str], out: Sequence[str]) -> tuple[str, ...]:
    """Shell lines that run the check and write its result to every path of `out` (shell words
    the caller built: they may expand variables such as $BATCHAI_NODE_ROOT), each atomically.
    `gpus` 0 skips the GPU part (a CPU size)."""
    q = shlex.quote
    t = CHECK_TIMEOUT_SECONDS
    body = [
        "batchai_health() {",
        f"  if [ {int(gpus)} -gt 0 ]; then",
        "    if ! command -v nvidia-smi >/dev/null 2>&1; then",
        "      echo 'no NVIDIA driver: nvidia-smi is not installed'; return",
        "    fi",
        f"    if ! listed=$(timeout {t} nvidia-smi -L 2>&1); then",
        "      first=$(printf '%s\\n' \"$listed\" | head -n 1 | tr -cd '[:print:]' | cut -c1-160)",
        '      echo "the NVIDIA driver does not answer: ${first:-nvidia-smi failed}"; return',
        "    fi",
        "    found=$(printf '%s\\n' \"$listed\" | grep -c '^GPU [0-9]' || true)",
        f'    if [ "$found" -ne {int(gpus)} ]; then',
        f'      echo "nvidia-smi lists $found GPU(s); the size has {int(gpus)}"; return',
        "    fi",
        "  fi",
    ]
    for path in mounts:
        said = q(f"share mount {path} does not answer")
        body.append(
            f"  if ! timeout {t} ls -A -- {q(path.rstrip('/') + '/')} >/dev/null 2>&1; then"
        )
        body.append(f"    echo {said}; return")
        body.append("  fi")
    body += [
        "}",
        # A setup task that failed (the azure setup script's) is the node's reason: not checked.
        'if [ -n "${batchai_setup_failed:-}" ]; then batchai_reason=$batchai_setup_failed; '
        "else batchai_reason=$(batchai_health | head -n 1); fi",
        'if [ -z "$batchai_reason" ]; then batchai_status=ok; else batchai_status=failed; fi',
    ]
    for target in out:
        body.append(
            f'printf "status=%s\\ngpus=%s\\nreason=%s\\n" "$batchai_status" {int(gpus)} '
            f'"$batchai_reason" > {target}.tmp && mv -f -- {target}.tmp {target}'
        )
    return tuple(body)


def parse(text: str | None) -> Health | None:
    """A result file's content; None when there is none yet (or it is half-written)."""
    if not text:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    status = fields.get("status")
    if status not in ("ok", "failed") or "reason" not in fields:
        return None
    reason = "".join(ch for ch in fields["reason"] if ch.isprintable())[:REASON_LIMIT]
    found = fields.get("gpus", "")
    gpus = int(found) if found.isdigit() else None
    if status == "ok" and not reason:
        return Health(True, "", gpus)
    return Health(False, reason or "the node failed its health check", gpus)
