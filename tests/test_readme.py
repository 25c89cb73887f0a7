"""The README's command reference is the one `/batchai help` prints (generated, never edited)."""

from pathlib import Path

from docs.update_reference import README, rendered


def test_readme_reference_matches_the_grammar() -> None:
    current = README.read_text()
    assert rendered(current) == current, "README command reference is stale: run `make docs`"


def test_readme_quick_start_is_two_commands() -> None:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "make run" in text and "make test" in text
