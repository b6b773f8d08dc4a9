"""The anomaly benchmark runs end to end (a quick run: one class, a few epochs, two fold counts) and reports every
method of each fold count on the same held-out rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.anomaly import main
from bench.detectors import DETECTORS


def test_a_quick_run_reports_served_scores_and_detectors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, page = tmp_path / "figures.json", tmp_path / "page.md"
    argv = ["--protocols", "digits", "--classes", "3", "--epochs", "3", "--k", "16", "--no-probe", "--folds", "1,2"]
    assert main([*argv, "--json", str(out), "--page", str(page)]) == 0
    text = capsys.readouterr().out
    served = [f"served {s} (F={f})" for s in ("nll", "reconstruction", "complexity", "combined") for f in (1, 2)]
    for method in (*served, "served likelihood_ratio (F=1)", *DETECTORS):  # an ensemble has no background model
        assert f"| {method} |" in text, method
    assert "the flags: false-positive rate" in text and "pooled over every protocol" in text
    assert "  - F=1: served " in text and "  - F=2: served " in text and "95 % paired bootstrap" in text
    assert page.read_text().startswith("# anomaly benchmark") and "- command: `python -m bench.anomaly --proto" in text
    figures = json.loads(out.read_text())
    aurocs = figures["per_case"]["digits"]["nll (F=2)"]["auroc"]
    assert len(aurocs) == 1 and 0.0 <= aurocs[0] <= 1.0
    for f in (1, 2):
        false_pos, normal, true_pos, anomalous = figures["flags"]["digits"][f"nll (F={f})@0.05"]
        assert (normal, anomalous) == (37, 1797 - 183)  # the same held-out rows of class 3 and anomalies for each F
        assert 0 <= false_pos <= normal and 0 <= true_pos <= anomalous
