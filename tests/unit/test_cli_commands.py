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


def test_models_reports_a_cache_only_when_complete_and_current(capsys, tmp_path, monkeypatch):
    import json

    folder = tmp_path / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "ngc_source.json").write_text(json.dumps({"version": "0.1.2"}))
    import ngc.cli.models_cmd as models_cmd

    monkeypatch.setattr(models_cmd, "installed_version", lambda dist: "0.1.2")

    def smollm2_row() -> str:
        assert cli.run(["models", "--cache-dir", str(tmp_path)]) == 0
        return next(line for line in capsys.readouterr().out.splitlines() if "smollm2-135m" in line)

    assert "no (converted" in smollm2_row()  # no config.json: an incomplete folder
    (folder / "config.json").write_text("{}")
    assert "yes" in smollm2_row()
    (folder / "ngc_source.json").write_text(json.dumps({"version": "0.0.9"}))
    assert "no (converted" in smollm2_row()  # made from another package version
