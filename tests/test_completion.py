"""`batchai-bot completion bash|zsh`: a script generated from the parser, which a real bash runs
to complete subcommands, options, choices and files; shtab is imported by that subcommand only."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import shtab

from bot.__main__ import COMPLETE_FILES, main

ROOT = Path(__file__).resolve().parents[1]


def _script(shell: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["completion", shell]) == 0
    return capsys.readouterr().out


def _complete(script: Path, words: list[str], cwd: Path) -> list[str]:
    """What bash offers for the last of `words`, as Tab would (the function `complete` names)."""
    line = " ".join(shlex.quote(w) if w else "''" for w in words)
    program = (
        f"source {shlex.quote(str(script))}\n"
        f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}\n"
        "$(complete -p batchai-bot | sed 's/.*-F \\([^ ]*\\) .*/\\1/')\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=True,
    )
    return sorted(filter(None, done.stdout.splitlines()))


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")
def test_bash_completes_subcommands_options_choices_and_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "batchai-bot.bash"
    script.write_text(_script("bash", capsys))
    (tmp_path / "myjob.json").write_text("{}")
    subcommands = ["check", "completion", "console", "manifest", "run", "validate"]
    assert _complete(script, ["batchai-bot", ""], tmp_path) == subcommands
    assert _complete(script, ["batchai-bot", "co"], tmp_path) == ["completion", "console"]
    assert _complete(script, ["batchai-bot", "manifest", "--re"], tmp_path) == ["--request-url"]
    assert _complete(script, ["batchai-bot", "completion", ""], tmp_path) == ["bash", "zsh"]
    assert _complete(script, ["batchai-bot", "validate", "my"], tmp_path) == ["myjob.json"]


def test_zsh_script_is_a_compdef_of_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    script = _script("zsh", capsys)
    assert script.startswith("#compdef batchai-bot")
    for name in ("run", "console", "validate", "check", "manifest", "completion", "--version"):
        assert name in script


def test_files_completion_is_shtabs(capsys: pytest.CaptureFixture[str]) -> None:
    # spelled out in bot/__main__.py to keep shtab lazy; the shells we offer at least
    assert {"bash", "zsh"} <= COMPLETE_FILES.keys()
    assert {shell: shtab.FILE[shell] for shell in COMPLETE_FILES} == COMPLETE_FILES


def test_an_unknown_shell_is_one_line_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["completion", "fish"])
    assert exit_.value.code == 2
    err = capsys.readouterr()
    assert err.out == ""
    assert "usage: batchai-bot completion" in err.err and "invalid choice: 'fish'" in err.err


def test_help_and_the_other_commands_do_not_import_shtab() -> None:
    code = (
        "import sys\n"
        "from bot.__main__ import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('shtab' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("False")
