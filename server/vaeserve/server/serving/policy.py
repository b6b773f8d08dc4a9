"""The scoring policy: one home for what a Score request gets, shared by the server (both protocols) and
vaeserve-batch. From a request and the model's defaults to the anomaly plan and the engine's options, their
cost in draws, the run, the reply and its columns; pure functions of the model, nothing about transport.

The anomaly rule: a request names its anomaly scores, or gets the model's default set when that set comes
free, i.e. when its K and seed are the calibration's (the request's own pass then gives the scores' nll);
otherwise it gets none, and a warning that says how to ask for them. A batch job is one request for this
rule, with its base seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vaeserve.api.manifest import Manifest
from vaeserve.api.scores import ANOMALY_FIELDS, Dtype, Group, anomaly_column, columns_of
from vaeserve.server.anomaly import TYPICALITY_UNAVAILABLE, AnomalyScorer
from vaeserve.server.engine import Engine, EnsembleEngine, ScoreOptions, ScoreResult
from vaeserve.server.errors import InvalidArgument
from vaeserve.server.serving.calls import Scored
from vaeserve.server.settings import Settings

__all__ = [
    "FALLBACK_K",
    "AnomalyPlan",
    "Defaults",
    "anomaly_plan",
    "default_anomaly_scores",
    "defaults_of",
    "draws_per_input",
    "output_columns",
    "run_score",
    "score_options",
    "scored",
]

FALLBACK_K = 1000  # K of a model without a calibration, when a request gives none


@dataclass(frozen=True)
class Defaults:
    """What a request gets for what it leaves out."""

    k: int
    seed: int
    alpha: float
    anomaly_scores: tuple[str, ...]  # what a Score request gets when it names none (the first fills `anomaly`)


def defaults_of(manifest: Manifest, scorer: AnomalyScorer, settings: Settings) -> Defaults:
    """A served model's defaults: its settings' (the model's own file over the server's), else the calibration's
    K (else FALLBACK_K)."""
    calibration = manifest.calibration
    return Defaults(
        k=settings.default_k or (calibration.k if calibration else FALLBACK_K),
        seed=settings.default_seed,
        alpha=settings.flag_alpha,
        anomaly_scores=default_anomaly_scores(scorer, settings.anomaly_scores),
    )


@dataclass(frozen=True)
class AnomalyPlan:
    """The anomaly part of a Score request: which scores, the typicality test, and whether the
    request's own pass (the calibration's K and seed) gives their nll."""

    names: tuple[str, ...] = ()
    typicality: bool = False
    reuse: bool = False

    @property
    def computed(self) -> tuple[str, ...]:
        return self.names + (("nll",) if self.typicality and "nll" not in self.names else ())

    def extra_k(self, k: int) -> int:
        """Samples per input the anomaly scores add to the request's own pass (at the calibration's K)."""
        if not self.computed:
            return 0
        own = 0 if self.reuse else k  # the nll pass at the calibration's K, unless the request's pass gives it
        return own + (k if "likelihood_ratio" in self.names else 0)  # the background model's pass


def default_anomaly_scores(scorer: AnomalyScorer, preferred: Sequence[str] | None = None) -> tuple[str, ...]:
    """What a Score request gets when it names no anomaly score: `preferred` (the settings'), else the
    benchmark's choice, kept to what the model serves; else the first score it serves."""
    served = scorer.served()
    return tuple(n for n in preferred or _benchmark_choice(scorer.manifest) if n in served) or tuple(served[:1])


def _benchmark_choice(manifest: Manifest) -> tuple[str, ...]:
    """The default set, chosen by `make bench-anomaly` (docs: anomaly detection): for images `combined` first,
    the only score that flags blank, constant and noise images alike; for tables the nll. A model without a
    standardization (older bundles) gets the others: the list is filtered by what the model serves."""
    if manifest.image is not None:
        return ("combined", "reconstruction", "nll", "complexity")
    return ("nll", "reconstruction", "combined")


def anomaly_plan(
    scorer: AnomalyScorer,
    defaults: Sequence[str],
    *,
    k: int,
    seed: int,
    adaptive: bool = False,
    anomaly: bool = True,
    names: Sequence[str] = (),
    typicality: bool = False,
) -> tuple[AnomalyPlan, str | None]:
    """Which anomaly scores a request computes, and a warning when the defaults were left out."""
    calibration = scorer.calibration
    if calibration is None:
        if names or typicality:
            raise InvalidArgument("this model has no anomaly calibration: no anomaly scores or typicality test")
        return AnomalyPlan(), None
    if typicality and scorer.ensemble:
        raise InvalidArgument(TYPICALITY_UNAVAILABLE)
    free = k == calibration.k and seed == calibration.seed and not adaptive
    if not anomaly:
        chosen: tuple[str, ...] = ()
    elif names:
        chosen = scorer.resolve(names)
    elif free:
        chosen = tuple(defaults)
    else:
        return AnomalyPlan((), typicality, free), (
            f"no anomaly scores: they use the calibration's K={calibration.k} and seed {calibration.seed}, "
            f"and this request has K={k}{' (adaptive)' if adaptive else ''} and seed {seed}; "
            f"name them (anomaly_scores) to compute them in a second pass"
        )
    return AnomalyPlan(chosen, typicality, free), None


def score_options(
    k: int,
    plan: AnomalyPlan,
    *,
    prior_estimate: bool = False,
    per_dim: bool = False,
    reconstruction: bool = False,
    target_se: float | None = None,
    max_k: int | None = None,
) -> ScoreOptions:
    """The engine's options; the request's own pass also gives the reconstruction error where it is reused."""
    return ScoreOptions(
        k=k,
        prior_estimate=prior_estimate,
        per_dim=per_dim,
        reconstruction=reconstruction,
        sq_err=plan.reuse and any(n in ("reconstruction", "combined") for n in plan.names),
        target_se=target_se,
        max_k=max_k,
    )


def draws_per_input(options: ScoreOptions, plan: AnomalyPlan, manifest: Manifest) -> int:
    """What one input costs in draws: its own pass(es) at its largest K, and the anomaly scores' passes."""
    own = max(options.max_k or options.k, options.k) * (1 + options.prior_estimate)
    calibration = manifest.calibration
    return own + (plan.extra_k(calibration.k) if calibration else 0)


def run_score(
    engine: Engine | EnsembleEngine,
    scorer: AnomalyScorer,
    x: np.ndarray,
    options: ScoreOptions,
    seeds: np.ndarray,
    plan: AnomalyPlan,
    check: Callable[[], None],
) -> tuple[ScoreResult, dict[str, np.ndarray]]:
    """The work of model-space inputs with one seed each: the estimates and the raw anomaly scores."""
    result = engine.score(x, options, seeds, check)
    raw: dict[str, np.ndarray] = {}
    if plan.computed:
        reused = scorer.reusable(result) if plan.reuse else None
        raw = scorer.raw(x, plan.computed, check=check, reused=reused)
    return result, raw


def scored(
    scorer: AnomalyScorer,
    work: tuple[ScoreResult, dict[str, np.ndarray]],
    options: ScoreOptions,
    plan: AnomalyPlan,
    *,
    seed: int,
    alpha: float,
    warnings: Sequence[str] = (),
) -> Scored:
    """A reply from its rows of the work: flags at its alpha, its typicality test, what to know about it."""
    result, raw = work
    anomalies = scorer.judge(raw, plan.names, alpha) if plan.names else []
    typicality = scorer.typicality(raw["nll"], alpha) if plan.typicality else None
    notes = list(warnings) if plan.computed else []
    unreliable = int(np.count_nonzero(result["unreliable"]))
    if unreliable:
        notes.append(
            f"{unreliable} of {len(result)} inputs have pareto_k > 0.7: their log_px and log_px_se are "
            "not reliable (raise k, or read the ELBO)"
        )
    return Scored(result, options, seed, anomalies, typicality, notes)


def output_columns(manifest: Manifest, options: ScoreOptions, plan: AnomalyPlan) -> list[tuple[str, Dtype]]:
    """The per-input columns a reply of these options and plan has, in the one table's order, then the
    named anomaly scores after the first as `<score>_<field>` (CSV, Parquet and the batch output)."""
    groups: list[Group] = ["estimate"]
    groups += ["prior"] if options.prior_estimate else []
    groups += ["adaptive"] if options.target_se is not None else []
    groups += ["anomaly"] if plan.names else []
    groups += ["ensemble"] if manifest.ensemble else []
    columns = [(c.name, c.dtype) for c in columns_of(*groups)]
    columns += [(anomaly_column(name, f.name), f.dtype) for name in plan.names[1:] for f in ANOMALY_FIELDS]
    return columns
