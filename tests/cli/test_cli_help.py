"""Every remote command has --help, fails clearly without an API, and never loads torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cli.main import main

REMOTE = ["submit", "watch", "pairs", "checkpoint", "export", "compare", "purge"]


@pytest.mark.parametrize("command", REMOTE)
def test_help_describes_the_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: dfusion {command}" in text and "--api URL" in text and "--token" in text


@pytest.mark.parametrize("argv", [["watch", "abc"], ["pairs", "abc", "--out", "d"],
                                  ["checkpoint", "abc", "--out", "d"], ["export", "abc", "--out", "f"],
                                  ["compare", "abc", "a cat"], ["purge", "abc"]])
def test_no_api_is_one_clear_line(argv, capsys, monkeypatch):
    monkeypatch.setenv("DFUSION_API_URL", "http://127.0.0.1:9")  # discard port: refused
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dfusion {argv[0]}: error: cannot reach the dfusion API at http://127.0.0.1:9 "
                   "(connection refused); start it (`dfusion stack up`) or pass --api / set DFUSION_API_URL"]


def test_submit_checks_the_prompts_file_first(tmp_path, capsys):
    assert main(["submit", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert main(["submit", str(bad)]) == 2
    assert "bad.jsonl:1: not JSON" in capsys.readouterr().err


def test_remote_commands_do_not_import_torch():
    code = ("import sys, cli.main\ncli.main.build_parser()\n"
            "import cli.client, cli.submit, cli.watch, cli.pairs, cli.checkpoint, cli.export, cli.compare, cli.purge, services.export\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
