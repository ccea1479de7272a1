"""A short soak (benchmarks/soak.py, 60 generations instead of 300) inside the test suite: identical outputs for
identical inputs and bounded host RSS growth, on the ONNX Runtime backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNS = 60
MAX_GROWTH_MIB = 50


@pytest.fixture(scope="module")
def soak_report(hardening_export):
    directory = hardening_export
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--export", str(directory),
                           "-n", str(RUNS), "--max-rss-growth-mib", str(MAX_GROWTH_MIB)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    lines = done.stdout.strip().splitlines()
    assert lines, f"soak printed nothing (exit {done.returncode}):\n{done.stderr[-3000:]}"
    report = json.loads(lines[-1])
    report["exit_code"] = done.returncode
    return report


def test_soak_outputs_are_identical_for_identical_inputs(soak_report):
    assert soak_report["n"] == RUNS and soak_report["requests"] >= 4
    assert soak_report["identical"] and soak_report["mismatches"] == 0, soak_report["first_mismatches"]


def test_soak_rss_growth_is_bounded(soak_report):
    growth = soak_report["rss_growth_mib"]
    assert growth < MAX_GROWTH_MIB, f"host RSS grew {growth} MiB over {RUNS} generations: {soak_report}"
    assert soak_report["exit_code"] == 0
