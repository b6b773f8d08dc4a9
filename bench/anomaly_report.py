"""The anomaly benchmark's report: markdown tables of the ranking metrics, the flags' error rates, the false-positive
rate pooled over every protocol, and each protocol's best served score against its best classical detector."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench import pages
from bench.anomaly_runs import ALPHAS, Protocol
from bench.metrics import Metric, auprc, auroc, mean_over_groups_ci, paired_difference_ci, rate_ci

MIN_POOLED_ROWS = 2000  # held-out normal rows that pin a flag's rate at alpha = 0.01 to within about +-0.005


def header(command: str, seconds: float, k: int) -> list[str]:
    return pages.header(f"anomaly benchmark ({seconds:.0f} s; K = {k})", command)


def _score_name(method: str) -> str:
    return method.rsplit(" (F=", 1)[0]


def _methods(protocols: list[Protocol]) -> list[str]:
    """Served methods first, each score's fold counts side by side; then the detectors, in their order."""
    methods = list(dict.fromkeys(m for p in protocols for m in p.groups))
    folds = {m: f for p in protocols for m, f in p.folds.items()}
    scores = list(dict.fromkeys(_score_name(m) for m in methods if m in folds))
    served = sorted((m for m in methods if m in folds), key=lambda m: (scores.index(_score_name(m)), folds[m]))
    return served + [m for m in methods if m not in folds]


def _is_served(method: str, protocols: list[Protocol]) -> bool:
    return any(method in p.folds for p in protocols)


def _label(method: str, protocols: list[Protocol]) -> str:
    return f"served {method}" if _is_served(method, protocols) else method


def _columns(protocols: list[Protocol]) -> str:
    return " | ".join(f"{p.name} ({len(next(iter(p.groups.values()), []))})" for p in protocols)


def metric_table(protocols: list[Protocol], metric: Metric, title: str) -> list[str]:
    lines = [
        f"\n{title}: mean over normal sets (beside each protocol, their number: classes x held-out splits), "
        "95 % bootstrap interval\n"
    ]
    lines.append("| method | " + _columns(protocols) + " |")
    lines.append("|---|" + "---:|" * len(protocols))
    for method in _methods(protocols):
        cells = []
        for p in protocols:
            groups = p.groups.get(method)
            if not groups:
                cells.append("—")
                continue
            mean, low, high = mean_over_groups_ci(metric, groups, n_boot=300, seed=0)
            cells.append(f"{mean:.3f} ({low:.3f}-{high:.3f})")
        lines.append(f"| {_label(method, protocols)} | " + " | ".join(cells) + " |")
    return lines


def _rate(count: int, n: int) -> str:
    low, high = rate_ci(count, n)
    return f"{count / n:.3f} ({low:.3f}-{high:.3f})"


def flag_table(protocols: list[Protocol]) -> list[str]:
    lines = [
        "\nthe flags: false-positive rate on held-out normal rows (exact 95 % interval) / true-positive rate "
        "(share of anomalies flagged), pooled over normal sets\n"
    ]
    lines.append("| score | alpha | " + " | ".join(p.name for p in protocols) + " |")
    lines.append("|---|---:|" + "---:|" * len(protocols))
    for method in [m for m in _methods(protocols) if _is_served(m, protocols)]:
        for alpha in ALPHAS:
            cells = []
            for p in protocols:
                counts = p.flags.get((method, alpha))
                cells.append("—" if counts is None else f"{_rate(counts[0], counts[1])} / {counts[2] / counts[3]:.3f}")
            lines.append(f"| {method} | {alpha:g} | " + " | ".join(cells) + " |")
    lines.append("")
    for p in protocols:
        counts = next(iter(p.flags.values()), [0, 0, 0, 0])
        calibration = ", ".join(f"F={f}: {np.mean(n):.0f}" for f, n in sorted(p.calibration.items()))
        lines.append(
            f"- {p.name}: {counts[1]} held-out normal rows, {counts[3]} anomalies; pool of {np.mean(p.pool_sizes):.0f} "
            f"rows per normal set; calibration rows per model ({calibration}): the smallest p-value is 1 / (n + 1)"
        )
    return lines


def _verdict(count: int, n: int, alpha: float) -> str:
    low, high = rate_ci(count, n)
    return "within error" if low <= alpha <= high else ("ABOVE alpha" if low > alpha else "below alpha")


def _unflaggable(p: Protocol, folds: int, alpha: float) -> bool:
    return any(1 / (n + 1) > alpha for n in p.calibration.get(folds, []))


def pooled_fpr(protocols: list[Protocol]) -> list[str]:
    """Each served score's false-positive rate over every protocol's held-out normal rows, per fold count."""
    lines = [
        "\nfalse-positive rate pooled over every protocol and repeated split (exact 95 % interval; is alpha inside?)\n"
    ]
    lines.append("| score | held-out normal rows | " + " | ".join(f"alpha = {a:g}" for a in ALPHAS) + " |")
    lines.append("|---|---:|" + "---:|" * len(ALPHAS))
    sizes: dict[int, int] = {}
    for method in [m for m in _methods(protocols) if _is_served(m, protocols)]:
        cells, n = [], 0
        f = next(p.folds[method] for p in protocols if method in p.folds)
        for alpha in ALPHAS:
            count = sum(p.flags[(method, alpha)][0] for p in protocols if (method, alpha) in p.flags)
            n = sum(p.flags[(method, alpha)][1] for p in protocols if (method, alpha) in p.flags)
            mark = "†" if any(_unflaggable(p, f, alpha) for p in protocols if method in p.folds) else ""
            cells.append(f"{_rate(count, n)} {_verdict(count, n, alpha)}{mark}")
        sizes[f] = max(n, sizes.get(f, 0))  # complexity is served for images only
        lines.append(f"| {method} | {n} | " + " | ".join(cells) + " |")
    lines.append("\n† some models' calibrations are too small to flag anything at this alpha (1 / (n + 1) > alpha)\n")
    for f, n in sorted(sizes.items()):
        enough = "enough" if n >= MIN_POOLED_ROWS else f"FEWER than the {MIN_POOLED_ROWS} wanted (more --repeats)"
        lines.append(f"- F={f}: {n} held-out normal rows pooled: {enough}")
    return lines


def _sets(n: int) -> str:
    return f"{n} normal set{'s' if n != 1 else ''}"


def best_lines(protocols: list[Protocol], n_boot: int = 1000) -> list[str]:
    """Per protocol and fold count: the best served score against the best detector by mean AUROC, with a paired
    bootstrap interval of their difference (the same resampled rows for both)."""
    lines = ["\nbest served score against the best classical detector (mean AUROC over normal sets)\n"]
    for p in protocols:
        means = {m: float(np.mean([auroc(n, a) for n, a in g])) for m, g in p.groups.items()}
        classical = max((m for m in means if m not in p.folds), key=lambda m: means[m])
        timings = "".join(f", {what} {seconds:.0f} s" for what, seconds in p.timings.items())
        lines.append(
            f"- {p.name} ({p.seconds:.0f} s{timings}; {_sets(len(p.groups[classical]))}; every method fitted on "
            f"the same {np.mean(p.pool_sizes):.0f} rows):"
        )
        for f in sorted(set(p.folds.values())):
            served = max((m for m in means if p.folds.get(m) == f), key=lambda m: means[m])
            diff, low, high = paired_difference_ci(auroc, p.groups[served], p.groups[classical], n_boot=n_boot)
            lines.append(
                f"  - F={f}: served {_score_name(served)} {means[served]:.3f} vs {classical} {means[classical]:.3f}: "
                f"difference {diff:+.3f} (95 % paired bootstrap {low:+.3f} to {high:+.3f})"
            )
    return lines


def report(protocols: list[Protocol], probe_lines: list[str]) -> list[str]:
    lines = metric_table(protocols, auroc, "AUROC")
    lines += metric_table(protocols, auprc, "AUPRC")
    lines += flag_table(protocols)
    lines += pooled_fpr(protocols)
    lines += probe_lines
    lines += best_lines(protocols)
    return lines


def figures(protocols: list[Protocol], probe_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-normal-set figures behind the tables, for --json."""
    return {
        "per_case": {
            p.name: {
                m: {"auroc": [auroc(n, a) for n, a in g], "auprc": [auprc(n, a) for n, a in g]}
                for m, g in p.groups.items()
            }
            for p in protocols
        },
        "flags": {p.name: {f"{m}@{a}": c for (m, a), c in p.flags.items()} for p in protocols},
        "pool_sizes": {p.name: p.pool_sizes for p in protocols},
        "calibration": {p.name: p.calibration for p in protocols},
        "probe": probe_rows,
    }
