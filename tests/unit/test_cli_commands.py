"""The happy paths of the commands (their error paths live in tests/errors)."""

from __future__ import annotations

from ngc.cli import main as cli


def test_models_lists_aliases_and_families(capsys):
    assert cli.run(["models"]) == 0
    out = capsys.readouterr().out
    for fragment in ("smollm2-135m", "gemma3-270m", "Llama (llama)", "GPT-NeoX (gpt_neox)"):
        assert fragment in out


def test_version_and_help(capsys):
    from ngc import __version__

    assert cli.run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ngc {__version__}"
    assert cli.run(["--help"]) == 0
    assert "eval" in capsys.readouterr().out
