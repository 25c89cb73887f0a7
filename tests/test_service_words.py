"""Services return typed outcomes and plain words; only handlers/ writes Slack markup.

A mention (`<@U…>`), a channel link (`<#C…>`) or a special mention (`<!here>`) made in a service
would reach Slack through whatever text the handler wraps it in, and the console would print it raw.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[1] / "services"
# A literal that opens markup, or ends where an f-string's value would complete it (`<@{user}>`);
# a regex's lookbehind `(?<!` is not markup.
MARKUP = re.compile(r"<[@#][A-Z{]|<!(here|channel|everyone|subteam|date)|<[@#!]$")


def _literals(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
    return found


@pytest.mark.parametrize(
    "path", sorted(SERVICES.rglob("*.py")), ids=lambda p: str(p.relative_to(SERVICES))
)
def test_no_slack_markup_in_service_text(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = [(n, s) for n, s in _literals(tree) if MARKUP.search(s)]
    assert not bad, f"{path.name}: Slack markup in service text at lines {[n for n, _ in bad]}"
