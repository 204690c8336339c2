"""Every bench/ script imports and parses its arguments (`make bench` runs them; a moved module must fail here)."""
from __future__ import annotations

import runpy
import sys

import pytest

from conftest import REPO

SCRIPTS = sorted((REPO / "bench").glob("*.py"))


def test_bench_has_scripts():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=[path.name for path in SCRIPTS])
def test_bench_script_help_runs(script, monkeypatch, capsys):
    """In process (torch is imported once for all): `--help` runs every import, then argparse exits 0."""
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.syspath_prepend(str(script.parent))
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code in (0, None) and "usage:" in capsys.readouterr().out
