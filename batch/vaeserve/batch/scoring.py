"""Scoring rows in-process with the server's engine, anomaly scorer and scoring policy: the Score RPC's
numbers and columns.

Each row is scored as the server scores a Score request holding that row alone with the same K and
`row_seeds(seed, global_index)`: the engine takes one seed per input, so a batch of rows with
their own seeds is one engine run, exactly as the server runs merged requests. Which anomaly scores a
run gets follows the server's rule (`vaeserve.server.serving.policy`) for the job's K and base seed:
the model's default set at the calibration's K and seed, else only the scores named. The anomaly scores
use the calibration's K and seed whatever the row's seed, which keeps them comparable with the calibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from vaeserve.api.manifest import Manifest
from vaeserve.api.scores import ANOMALY_FIELDS, anomaly_column
from vaeserve.server.anomaly import alpha_of, open_scorer
from vaeserve.server.engine import Engine, NoiseCache, RuntimeConfig, ScoreOptions, load_bundle, no_check, open_engine
from vaeserve.server.errors import InvalidArgument
from vaeserve.server.serving.policy import (
    FALLBACK_K,
    AnomalyPlan,
    anomaly_plan,
    default_anomaly_scores,
    draws_per_input,
    output_columns,
    run_score,
    score_options,
    scored,
)
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
    """What every row of a run gets: K, the base seed, the flags' level and the anomaly plan (its first score
    fills `anomaly_score`, `percentile`, `p_value` and `is_anomaly`; the others `<name>_<field>`)."""

    k: int
    seed: int
    alpha: float
    plan: AnomalyPlan
    prior_estimate: bool = False
    warnings: tuple[str, ...] = ()  # the policy's word on the plan (no anomaly scores at this K, say)

    @property
    def anomaly_scores(self) -> tuple[str, ...]:
        return self.plan.names

    @property
    def options(self) -> ScoreOptions:
        return score_options(self.k, self.plan, prior_estimate=self.prior_estimate)

    def draws_per_row(self, manifest: Manifest) -> int:
        """Draws one row costs: its own pass(es) and the anomaly scores' pass at the calibration's K."""
        return draws_per_input(self.options, self.plan, manifest)


class RowScorer:
    """One bundle's engine (its sessions) and anomaly scorer, for rows with their own seeds."""

    def __init__(self, bundle: Path, *, threads: int = 1, warm_up: bool = True) -> None:
        loaded = load_bundle(bundle)
        runtime = RuntimeConfig(device="cpu", intra_op_threads=threads)
        # Every row has its own seed: no seed comes back, so caching draws would only cost memory.
        self.engine = open_engine(loaded, runtime, noise_cache=NoiseCache(0))
        background = None
        if loaded.background is not None:
            background = Engine(loaded.background, runtime, noise_cache=NoiseCache(0))
        self.scorer = open_scorer(self.engine, background)
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
        """The run's settings with the server's defaults filled in and its anomaly rule applied:
        anomaly_scores=None: the model's default set where the server would give it, () for none."""
        calibration = self.manifest.calibration
        k = k if k is not None else calibration.k if calibration else FALLBACK_K
        if k < 1:
            raise InvalidArgument(f"k must be at least 1, got {k}")
        seed = int(Settings.model_fields["default_seed"].default) if seed is None else seed
        if not 0 <= seed < SEED_SPACE:
            raise InvalidArgument(f"seed must lie in [0, 2**64), got {seed}")
        alpha = alpha_of(alpha, None, float(Settings.model_fields["alpha"].default))
        plan, warning = anomaly_plan(
            self.scorer,
            default_anomaly_scores(self.scorer),
            k=k,
            seed=seed,
            anomaly=anomaly_scores != (),
            names=anomaly_scores or (),
        )
        # Rows draw from their own seeds, never the calibration's: the anomaly scores always take their own pass.
        plan = replace(plan, reuse=False)
        return ScoreSpec(k, seed, alpha, plan, prior_estimate, (warning,) if warning else ())

    def schema(self, spec: ScoreSpec) -> pa.Schema:
        """The output's columns: the row's keys, then the Score reply's per-input columns in the table's order."""
        fields = [pa.field(name, kind) for name, kind in KEY_COLUMNS]
        fields += [
            pa.field(name, _ARROW[dtype]) for name, dtype in output_columns(self.manifest, spec.options, spec.plan)
        ]
        return pa.schema(fields)

    def score(self, raw: np.ndarray, seeds: np.ndarray, spec: ScoreSpec) -> dict[str, np.ndarray]:
        """Per-row score columns of raw inputs [B, ...] with one seed per row (the schema's order, keys aside)."""
        x = self.engine.prepare(raw)
        options = spec.options
        work = run_score(self.engine, self.scorer, x, options, seeds, spec.plan, no_check)
        reply = scored(self.scorer, work, options, spec.plan, seed=spec.seed, alpha=spec.alpha)
        columns = reply.columns()
        for extra in reply.anomalies[1:]:
            columns.update({anomaly_column(extra.name, f.name): extra.field(f.name) for f in ANOMALY_FIELDS})
        return columns


def batch_rows(spec: ScoreSpec, manifest: Manifest, total: int, actors: int, draws: int = DRAWS_PER_BATCH) -> int:
    """Rows per actor call: `draws` over the draws a row costs, and small enough that every actor gets
    a few batches (a run of 100,000 rows at K=1 on two actors is not one batch of 65,536 and a rest)."""
    by_draws = max(1, draws // spec.draws_per_row(manifest))
    return max(1, min(by_draws, math.ceil(total / (4 * actors))))
