"""The anomaly benchmark runs end to end (a quick run: one class, a few epochs) and reports every method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.anomaly import main
from bench.detectors import DETECTORS


def test_a_quick_run_reports_served_scores_and_detectors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figures.json"
    argv = ["--protocols", "digits", "--classes", "3", "--epochs", "3", "--k", "16", "--no-probe", "--json", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for method in ("served nll", "served reconstruction", "served complexity", "served likelihood_ratio", *DETECTORS):
        assert f"| {method} |" in text, method
    assert "false-positive rate of the flags" in text and "- digits: served" in text
    figures = json.loads(out.read_text())
    aurocs = figures["per_class"]["digits"]["nll"]["auroc"]
    assert len(aurocs) == 1 and 0.0 <= aurocs[0] <= 1.0
    flagged, n = figures["flags"]["digits"]["nll@0.05"]
    assert n == 18 and 0 <= flagged <= n  # the held-out normal rows of class 3
