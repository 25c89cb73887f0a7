"""Rewrites the README's command reference from the grammar's table (`make docs`)."""

from __future__ import annotations

import sys
from pathlib import Path

from handlers.grammar import reference_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- commands:start -->", "<!-- commands:end -->"


def rendered(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    body = reference_markdown().replace("# `/batchai` command reference", "", 1).strip()
    # one level down: the reference sits under the README's own "## Command reference"
    body = "\n".join("#" + line if line.startswith("## ") else line for line in body.splitlines())
    return f"{head}{START}\n{body}\n{END}{tail}"


if __name__ == "__main__":
    current = README.read_text()
    new = rendered(current)
    if "--check" in sys.argv:
        sys.exit(0 if new == current else "README command reference is stale: run `make docs`")
    README.write_text(new)
