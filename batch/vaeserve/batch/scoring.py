"""Scoring rows in-process with the server's engine and anomaly scorer: the Score RPC's numbers and columns.

Each row is scored as the server scores a Score request holding that row alone with the same K and
`row_seeds(seed, global_index)`: the engine takes one seed per input, so a batch of rows with
their own seeds is one engine run, exactly as the server runs merged requests. The anomaly scores
use the calibration's K and seed whatever the row's seed (the server's rule, which keeps them
comparable with the calibration), and are named explicitly: the server computes them for such a
request only when asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from vaeserve.api.manifest import Manifest
from vaeserve.api.scores import ANOMALY_FIELDS, Group, anomaly_column, columns_of
from vaeserve.server.anomaly import AnomalyScorer, alpha_of
from vaeserve.server.engine import Engine, NoiseCache, RuntimeConfig, ScoreOptions, load_bundle
from vaeserve.server.errors import InvalidArgument
from vaeserve.server.serving.calls import Scored
from vaeserve.server.serving.model import FALLBACK_K, default_anomaly_scores
from vaeserve.server.settings import Settings

__all__ = ["DRAWS_PER_BATCH", "KEY_COLUMNS", "SEED_SPACE", "RowScorer", "ScoreSpec", "batch_rows", "row_seeds"]

DRAWS_PER_BATCH = 65_536  # rows x draws per actor call: about 0.1-1 s of work, a few MB of results
SEED_SPACE = 2**64  # the Score RPC's seed is a uint64
KEY_COLUMNS = (("source", pa.string()), ("index", pa.int64()), ("global_index", pa.int64()), ("seed", pa.uint64()))
_ARROW = {"float64": pa.float64(), "bool": pa.bool_(), "int64": pa.int64()}


def row_seeds(seed: int, global_index: np.ndarray) -> np.ndarray:
    """The seed of each row: (seed + global index) mod 2**64, a function of the row's place in the whole input."""
    return np.asarray(global_index, dtype=np.uint64) + np.uint64(seed)  # uint64 arrays wrap around


@dataclass(frozen=True)
class ScoreSpec:
    """What every row of a run gets: K, the base seed, the flags' level and the anomaly scores (first fills
    `anomaly_score`, `percentile`, `p_value` and `is_anomaly`; the others `<name>_<field>`)."""

    k: int
    seed: int
    alpha: float
    anomaly_scores: tuple[str, ...]
    prior_estimate: bool = False

    def draws_per_row(self, manifest: Manifest) -> int:
        """Draws one row costs: its own pass(es) and the anomaly scores' pass at the calibration's K."""
        own = self.k * (1 + self.prior_estimate)
        calibration = manifest.calibration
        if not self.anomaly_scores or calibration is None:
            return own
        return own + calibration.k * (1 + ("likelihood_ratio" in self.anomaly_scores))


class RowScorer:
    """One bundle's engine (one onnxruntime session per graph) and anomaly scorer, for rows with their own seeds."""

    def __init__(self, bundle: Path, *, threads: int = 1, warm_up: bool = True) -> None:
        loaded = load_bundle(bundle)
        runtime = RuntimeConfig(device="cpu", intra_op_threads=threads)
        # Every row has its own seed: no seed comes back, so caching draws would only cost memory.
        self.engine = Engine(loaded, runtime, noise_cache=NoiseCache(0))
        background = None
        if loaded.background is not None:
            background = Engine(loaded.background, runtime, noise_cache=NoiseCache(0))
        self.scorer = AnomalyScorer(self.engine, background)
        self.manifest: Manifest = self.engine.manifest
        if warm_up:
            self.engine.warm_up()
            if background is not None:
                background.warm_up()

    def spec(
        self,
        *,
        k: int | None = None,
        seed: int | None = None,
        alpha: float | None = None,
        anomaly_scores: tuple[str, ...] | None = None,
        prior_estimate: bool = False,
    ) -> ScoreSpec:
        """The run's settings with the server's defaults filled in; anomaly_scores=None: the model's default
        set (none without a calibration), () for none."""
        calibration = self.manifest.calibration
        k = k if k is not None else calibration.k if calibration else FALLBACK_K
        if k < 1:
            raise InvalidArgument(f"k must be at least 1, got {k}")
        seed = int(Settings.model_fields["default_seed"].default) if seed is None else seed
        if not 0 <= seed < SEED_SPACE:
            raise InvalidArgument(f"seed must lie in [0, 2**64), got {seed}")
        alpha = alpha_of(alpha, None, float(Settings.model_fields["alpha"].default))
        if anomaly_scores is None:
            names = default_anomaly_scores(self.scorer)
        elif anomaly_scores and calibration is None:
            raise InvalidArgument("this model has no anomaly calibration: no anomaly scores")
        else:
            names = self.scorer.resolve(anomaly_scores) if anomaly_scores else ()
        return ScoreSpec(k, seed, alpha, names, prior_estimate)

    def schema(self, spec: ScoreSpec) -> pa.Schema:
        """The output's columns: the row's keys, then the Score reply's per-input columns in the table's order."""
        groups: list[Group] = ["estimate"]
        groups += ["prior"] if spec.prior_estimate else []
        groups += ["anomaly"] if spec.anomaly_scores else []
        fields = [pa.field(name, kind) for name, kind in KEY_COLUMNS]
        fields += [pa.field(c.name, _ARROW[c.dtype]) for c in columns_of(*groups)]
        fields += [
            pa.field(anomaly_column(name, f.name), _ARROW[f.dtype])
            for name in spec.anomaly_scores[1:]
            for f in ANOMALY_FIELDS
        ]
        return pa.schema(fields)

    def score(self, raw: np.ndarray, seeds: np.ndarray, spec: ScoreSpec) -> dict[str, np.ndarray]:
        """Per-row score columns of raw inputs [B, ...] with one seed per row (the schema's order, keys aside)."""
        x = self.engine.prepare(raw)
        options = ScoreOptions(k=spec.k, prior_estimate=spec.prior_estimate)
        result = self.engine.score(x, options, seeds)
        anomalies = []
        if spec.anomaly_scores:
            raw_scores = self.scorer.raw(x, spec.anomaly_scores)
            anomalies = self.scorer.judge(raw_scores, spec.anomaly_scores, spec.alpha)
        columns = Scored(result, options, spec.seed, anomalies).columns()
        for extra in anomalies[1:]:
            columns.update({anomaly_column(extra.name, f.name): extra.field(f.name) for f in ANOMALY_FIELDS})
        return columns


def batch_rows(spec: ScoreSpec, manifest: Manifest, total: int, actors: int, draws: int = DRAWS_PER_BATCH) -> int:
    """Rows per actor call: `draws` over the draws a row costs, and small enough that every actor gets
    a few batches (a run of 100,000 rows at K=1 on two actors is not one batch of 65,536 and a rest)."""
    by_draws = max(1, draws // spec.draws_per_row(manifest))
    return max(1, min(by_draws, math.ceil(total / (4 * actors))))
