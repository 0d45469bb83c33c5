"""The command line answers at once and explains itself: every option has a help line, `--version` works."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from service.cli import build_parser, main, parsers


def test_every_option_and_argument_has_a_help_line() -> None:
    undocumented = [f"{p.prog} {'/'.join(a.option_strings) or a.dest}" for p in parsers(build_parser())
                    for a in p._actions
                    if not isinstance(a, argparse._SubParsersAction) and not (a.help or "").strip()]
    assert undocumented == []


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["index", "images", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 64)" in out  # --batch-size
    assert "FINESEARCH_MODEL, else the demo bundle models/demo" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("finesearch ")


def test_building_the_parser_imports_no_torch_fastapi_or_uvicorn() -> None:
    """What makes `--help` fast (bench/bench_cli.py measures it): heavy modules come with the commands."""
    heavy = ("torch", "open_clip", "fastapi", "uvicorn", "qdrant_client")
    code = ("import sys; from service.cli import build_parser; build_parser(); "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
