"""What a run reports at the end: counts, speed, and each score column's mean, min, max and flags."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from vaeserve.api.scores import anomaly_column
from vaeserve.api.tables import format_table
from vaeserve.batch.scoring import KEY_COLUMNS, ScoreSpec

__all__ = ["ColumnStats", "RunSummary", "column_stats"]

_KEYS = {name for name, _ in KEY_COLUMNS}


@dataclass
class ColumnStats:
    """Running mean (of the finite values), min and max of one float column, and how many were flagged."""

    flag: str | None = None  # the bool column that flags rows by this score
    count: int = 0
    total: float = 0.0
    low: float = np.inf
    high: float = -np.inf
    flagged: int = 0

    def add(self, values: np.ndarray, flags: np.ndarray | None) -> None:
        finite = values[np.isfinite(values)]
        if len(finite):
            self.count += len(finite)
            self.total += float(finite.sum())
            self.low = min(self.low, float(finite.min()))
            self.high = max(self.high, float(finite.max()))
        if flags is not None:
            self.flagged += int(np.count_nonzero(flags))

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")


@dataclass
class RunSummary:
    """A run: where it writes, how fast it went, and its columns' statistics (its clock starts when it is made)."""

    model: str
    spec: ScoreSpec
    out: str
    files: int
    actors: int
    batch_rows: int
    rows: int = 0
    seconds: float = 0.0  # from the dataset's start to its last row written (actors starting included)
    first_seconds: float = 0.0  # until the first results came back
    first_rows: int = 0
    unreliable: int = 0
    columns: dict[str, ColumnStats] = field(default_factory=dict)
    _began: float = field(default_factory=time.perf_counter, init=False, repr=False)

    def add(self, columns: dict[str, np.ndarray]) -> None:
        if not self.rows:
            self.first_seconds, self.first_rows = time.perf_counter() - self._began, len(columns["global_index"])
        self.rows += len(columns["global_index"])
        self.unreliable += int(np.count_nonzero(columns["unreliable"]))
        for name, stats in self.columns.items():
            stats.add(np.asarray(columns[name], dtype=np.float64), columns[stats.flag] if stats.flag else None)

    def finish(self) -> None:
        self.seconds = time.perf_counter() - self._began

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    @property
    def steady_rate(self) -> float:
        """Rows per second once the first results came back: the actors' pace, their start left out."""
        span = self.seconds - self.first_seconds
        return (self.rows - self.first_rows) / span if span > 0 and self.rows > self.first_rows else float("nan")

    def table(self) -> str:
        spec = self.spec
        names = spec.anomaly_scores
        title = (
            f"scored {self.rows} rows from {self.files} file{'s' * (self.files != 1)} with {self.model} "
            f"in {self.seconds:.1f} s ({self.rate:.1f} rows/s; first results after {self.first_seconds:.1f} s, "
            f"{self.steady_rate:.1f} rows/s from then on; {self.actors} actor{'s' * (self.actors != 1)}, "
            f"{self.batch_rows} rows a batch); K={spec.k}, seed {spec.seed} + global_index"
            + (
                f", anomaly scores {', '.join(names)} (the first is anomaly_score) at alpha {spec.alpha:g}"
                if names
                else ""
            )
        )
        rows = [
            (
                name,
                s.mean,
                s.low if s.count else float("nan"),
                s.high if s.count else float("nan"),
                s.flagged if s.flag else "",
            )
            for name, s in self.columns.items()
        ]
        lines = [format_table(["column", "mean", "min", "max", "flagged"], rows, title=title)]
        if self.unreliable:
            lines.append(f"{self.unreliable} rows have pareto_k > 0.7: their log_px is not reliable (raise --k)")
        lines.append(f"wrote {self.out}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "out": self.out,
            "rows": self.rows,
            "files": self.files,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rate, 1),
            "first_results_s": round(self.first_seconds, 3),
            "steady_rows_per_s": round(self.steady_rate, 1),
            "actors": self.actors,
            "batch_rows": self.batch_rows,
            "k": self.spec.k,
            "seed": self.spec.seed,
            "alpha": self.spec.alpha,
            "anomaly_scores": list(self.spec.anomaly_scores),
            "unreliable": self.unreliable,
            "columns": {
                name: {"mean": s.mean, "min": s.low, "max": s.high, **({"flagged": s.flagged} if s.flag else {})}
                for name, s in self.columns.items()
            },
        }


def column_stats(schema: pa.Schema, spec: ScoreSpec) -> dict[str, ColumnStats]:
    """Statistics for the output's float columns; a score's row counts its rows flagged."""
    flags = {"anomaly_score": "is_anomaly"}
    flags.update({anomaly_column(n, "score"): anomaly_column(n, "is_anomaly") for n in spec.anomaly_scores})
    return {
        f.name: ColumnStats(flags.get(f.name))
        for f in schema
        if f.name not in _KEYS and pa.types.is_floating(f.type) and not _is_anomaly_detail(f.name)
    }


def _is_anomaly_detail(name: str) -> bool:
    """Percentiles and p-values: their spread says little in a summary (the flags count them)."""
    return any(name == d or name.endswith(f"_{d}") for d in ("percentile", "p_value"))
