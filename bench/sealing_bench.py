"""Sealing benchmark: CPU per job of sealing a job.json's secrets (insert) and opening them
(launch), and of the first-start pass that seals the rows an older version left in plain text."""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.fernet import Fernet  # noqa: E402

from services.store import SqlStore  # noqa: E402
from services.store.sealing import SecretBox  # noqa: E402
from tests.conftest import make_cluster, make_job  # noqa: E402


def document(secrets: int) -> str:
    values = [{"name": f"S{i}", "value": "s" * 40} for i in range(secrets)]
    command = {"commandLine": "python train.py"}
    return json.dumps(
        {"properties": {"nodeCount": 1, "secrets": values, "customToolkitSettings": command}}
    )


def per_call(box: SecretBox, text: str, n: int) -> tuple[float, float]:
    start = time.process_time()
    for _ in range(n):
        sealed = box.seal_spec(text)
    middle = time.process_time()
    for _ in range(n):
        box.open_spec(sealed)
    return (middle - start) / n * 1e6, (time.process_time() - middle) / n * 1e6


async def first_start(rows: int, secrets: int) -> float:
    """CPU seconds of the migrate() that seals `rows` plain job rows (SQLite)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        url = f"sqlite+aiosqlite:///{path}"
        old = SqlStore(url)
        await old.migrate()
        await old.insert_cluster(make_cluster())
        for i in range(rows):
            await old.insert_job(make_job(f"j{i}"))
        await old.aclose()
        with sqlite3.connect(path) as db:  # as a version before the sealing left them
            db.execute("UPDATE jobs SET spec_json = ?", (document(secrets),))
            db.execute("DELETE FROM secrets_check")
        store = SqlStore(url, secrets=SecretBox.from_keys(Fernet.generate_key().decode()))
        start = time.process_time()
        await store.migrate()
        spent = time.process_time() - start
        await store.aclose()
        return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=1000)
    args = parser.parse_args()
    box = SecretBox.from_keys(Fernet.generate_key().decode())
    for secrets in (0, 1, 5, 20):
        seal, open_ = per_call(box, document(secrets), args.calls)
        print(f"{secrets:>2} secrets: seal {seal:7.1f} us, open {open_:7.1f} us (CPU per job)")
    spent = asyncio.run(first_start(args.rows, 5))
    print(f"first start sealing {args.rows} plain rows (5 secrets each): {spent:.2f} s CPU")


if __name__ == "__main__":
    main()
