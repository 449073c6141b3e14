"""Every benchmark script answers --help and refuses a bad command line in one line (they are
command-line entry points like `python -m core`). Run in this process: each script's main is
reached through runpy, so the tier stays fast."""

from __future__ import annotations

import contextlib
import io
import runpy
import sys
from pathlib import Path

import pytest

BENCH = sorted((Path(__file__).resolve().parent.parent / "bench").glob("*.py"))


def run_script(path: Path, argv):
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = [str(path), *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(path), run_name="__main__")
                code = 0
            except SystemExit as exc:
                code = exc.code
    finally:
        sys.argv = saved
    return code, out.getvalue(), err.getvalue()


def test_there_are_benchmarks():
    assert len(BENCH) >= 9


@pytest.mark.parametrize("path", BENCH, ids=lambda p: p.name)
def test_a_benchmark_answers_help_and_refuses_a_bad_option_in_one_line(path):
    code, out, err = run_script(path, ["--help"])
    assert code == 0 and err == "", err
    assert out.startswith(f"usage: python bench/{path.name}"), out[:200]
    code, out, err = run_script(path, ["--no-such-option", "7"])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--no-such-option" in lines[0], err
