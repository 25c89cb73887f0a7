"""Packaging: only public SDK modules are imported; the wheel works outside the checkout."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = {"bot", "handlers", "services", "manifests", "examples"}


def _private(module: str) -> bool:
    """`pkg._shared.policies`, `slack_bolt.request.async_internals`: not the SDK's public API."""
    parts = module.split(".")
    return any(p.startswith("_") or p.endswith("internals") for p in parts[1:])


def test_no_private_sdk_module_is_imported() -> None:
    found = []
    for package in ("bot", "handlers", "services"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    modules = [node.module]
                else:
                    continue
                found += [
                    f"{path.relative_to(ROOT)}: {m}"
                    for m in modules
                    if m.split(".")[0] not in OURS and _private(m)
                ]
    assert found == []
