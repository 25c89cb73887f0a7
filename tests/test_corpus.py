"""The whole Batch AI recipe corpus in ../shared loads when present, except two broken files."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.errors import SpecError
from services.jobspec import ClusterSpec, FileServerSpec, JobSpec, load_any

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "batchai-recipes"
# Not strict JSON (a trailing comma), fixed in the next upstream commit.
BROKEN = {
    "TensorFlow-GPU@2018-05-15-1ace2a6/job.json",
    "TensorFlow-GPU-Distributed@2018-08-23-7cef9df/job.json",
}


def test_every_corpus_file_loads_except_the_trailing_comma_ones() -> None:
    if not CORPUS.is_dir():
        pytest.skip("../shared corpus not present")
    files = sorted(p for p in CORPUS.rglob("*.json") if p.is_file())
    assert len(files) == 79
    loaded: dict[str, JobSpec | ClusterSpec | FileServerSpec] = {}
    failed: dict[str, str] = {}
    for path in files:
        name = path.relative_to(CORPUS).as_posix()
        try:
            loaded[name] = load_any(path.read_bytes(), source=name)
        except SpecError as exc:
            failed[name] = str(exc)
    assert set(failed) == BROKEN, failed
    for name, message in failed.items():
        assert message.startswith(f"{name}: invalid JSON at line ")
    kinds = [type(spec).__name__ for spec in loaded.values()]
    assert (kinds.count("JobSpec"), kinds.count("ClusterSpec"), kinds.count("FileServerSpec")) == (
        73,
        3,
        1,
    )
    versions = {spec.api_version for spec in loaded.values() if isinstance(spec, JobSpec)}
    assert versions == {"2017-09-01-preview", "2018-03-01", "2018-05-01"}
