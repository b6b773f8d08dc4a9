"""What the `vaeserve` command line prints and writes: the info table, the score summary, CSV, progress."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from vaeserve.client._results import ModelInfo, Scores

__all__ = ["Progress", "cell", "info_rows", "score_summary", "write_csv"]


def info_rows(info: ModelInfo) -> list[tuple[str, str]]:
    m = info.manifest
    rows = [
        ("input shape", " x ".join(map(str, info.input_shape))),
        ("latent dim", str(info.latent_dim)),
        ("likelihood", info.likelihood),
        *(
            [("ensemble", f"{len(m.members)} cross-fitted members (Encode, Decode and Sample use member 0)")]
            if m.members
            else []
        ),
        ("execution provider", info.execution_provider),
        ("replica", info.served_by.replica),
        ("limits", ", ".join(f"{k} {v}" for k, v in info.limits.items())),
        (
            "defaults",
            f"K {info.defaults['k']}, seed {info.defaults['seed']}, alpha {info.defaults['alpha']:g}, "
            f"anomaly scores {','.join(info.default_anomaly_scores) or 'none'}",
        ),
    ]
    if m.training:
        t = m.training
        rows += [
            (
                "trained on",
                f"{t.dataset}{f' classes {t.classes}' if t.classes else ''}: {t.n_train} inputs, {t.epochs} epochs",
            ),
            ("test ELBO", f"{t.test_elbo.value:.3f} ± {t.test_elbo.se:.3f} nats"),
            (f"test log p(x), K={t.test_iwae.k}", f"{t.test_iwae.value:.3f} ± {t.test_iwae.se:.3f} nats"),
        ]
    if m.calibration:
        c = m.calibration
        q = [c.quantile(p, "nll") for p in (0.5, 0.99)] if "nll" in c.scores else [np.nan, np.nan]
        crossfit = f", cross-fitted over {c.members} members" if c.members > 1 else ""
        rows.append(
            (
                "calibration",
                f"{c.n} inputs of {c.dataset}{crossfit}, {c.estimator} K={c.k}, nll median {q[0]:.2f}, 99th pct "
                f"{q[1]:.2f}; smallest alpha {c.min_alpha:.3g}",
            )
        )
    served = [name for name, reason in info.anomaly_scores.items() if not reason]
    if info.anomaly_scores:
        rows.append(("anomaly scores", ", ".join(served) or "none"))
    rows += [("warning", warning) for warning in info.warnings]
    return rows


class Progress:
    """A one-line progress report on stderr for long files."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.started = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if self.enabled:
            rate = done / max(time.perf_counter() - self.started, 1e-9)
            of = f"/{total}" if total else ""
            print(f"\rscored {done}{of} inputs ({rate:.1f}/s)", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def score_summary(scores: Scores, seconds: float) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "inputs": len(scores),
        "K": scores.k,
        "seed": scores.seed,
        "mean log p(x)": round(float(scores.log_px.mean()), 4),
        "mean ELBO": round(float(scores.elbo.mean()), 4),
        "median se of log p(x)": round(float(np.nanmedian(scores.log_px_se)), 4) if scores.k > 1 else None,
        "seconds": round(seconds, 3),
        "inputs/s": round(len(scores) / max(seconds, 1e-9), 1),
    }
    if scores.k_used is not None:
        summary["K used (median, max)"] = f"{int(np.median(scores.k_used))}, {int(scores.k_used.max())}"
    unreliable = int(scores.unreliable.sum())
    if unreliable:
        summary["pareto k > 0.7"] = unreliable
    for name, a in scores.anomalies.items():
        summary[f"flagged by {name} (alpha {a.alpha:g})"] = int(a.is_anomaly.sum())
        if not np.isnan(a.threshold):  # NaN: a cross-fitted ensemble's p-values have no one threshold
            summary[f"{name} threshold"] = round(a.threshold, 4) if np.isfinite(a.threshold) else None
    if scores.typicality is not None:
        t = scores.typicality
        summary["typicality p-value"] = round(t.p_value, 4)
        summary["typical"] = not t.is_atypical
    return summary


def write_csv(scores: Scores, path: Path) -> None:
    columns = scores.columns()
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["index", *columns])
        for i in range(len(scores)):
            writer.writerow([i, *(cell(values[i]) for values in columns.values())])


def cell(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    return f"{float(value):.6g}"
