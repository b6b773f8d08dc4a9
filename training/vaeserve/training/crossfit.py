"""A cross-fitted training run: F members, each trained without its fold and calibrated on it (format 2).

The members are written as format-1 bundles in member-<f>/ of the staging directory, then the
ensemble's manifest over them; evaluation and calibration go through the served ensemble engine, so
a calibration row is scored exactly as a served request scores a new input. The held-out figures of the
summary are out-of-fold: each row scored by the member that never saw it (or the ensemble's on the test
rows, when --split holds some out).
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from vaeserve.api.manifest import Calibration, Standardization, TrainingSummary, member_dir, member_draws, member_seed
from vaeserve.server.anomaly import AnomalyScorer
from vaeserve.server.engine import EnsembleEngine, ScoreOptions, save_ensemble
from vaeserve.server.engine.bundle import update_manifest
from vaeserve.training.data import Dataset
from vaeserve.training.evaluate import KRow, active_units, evaluate
from vaeserve.training.export import export_bundle
from vaeserve.training.fitting import epochs_choice, fit_best, flat
from vaeserve.training.folds import FoldSplits, make_folds
from vaeserve.training.models import VAEConfig
from vaeserve.training.runs import DEFAULT_ALPHA, RunConfig, RunReport, cpu_engine
from vaeserve.training.train import History

__all__ = ["calibrate_members", "run_members"]


def run_members(config: RunConfig, staging: Path, data: Dataset, folds: int, why: str) -> RunReport:
    started = time.perf_counter()
    splits = make_folds(data, config.train.seed, folds, classes=config.classes, fractions=config.split)
    model_config = config.model or VAEConfig(input_shape=data.input_shape)
    model_config.input_shape, model_config.likelihood = data.input_shape, data.likelihood
    name = config.name or data.name.removesuffix(".npy").removesuffix(".csv")
    created = datetime.now(UTC).replace(microsecond=0)
    histories: list[History] = []
    parity, picked = 0.0, ""
    for f in range(folds):
        train_raw, val_raw = splits.member(f)
        pre = splits.preprocessing(f)
        if data.likelihood == "logistic":
            model_config.level_width = pre.scale[0]
        train = pre.apply(flat(train_raw)).reshape(train_raw.shape)
        val = pre.apply(flat(val_raw)).reshape(val_raw.shape)
        seeded = replace(config.train, seed=config.train.seed + f)  # members differ in their start too
        model, history, model_config, choice = fit_best(model_config, train, val, seeded)
        picked = picked or choice
        model_config = replace(model_config)  # the kind member 0 picked, for every member
        histories.append(history)
        _, member_parity = export_bundle(
            model.cpu(),
            staging / member_dir(f),
            pre.apply(flat(splits.calib(f))),
            name=f"{name}-member-{f}",
            version=config.version,
            created=created,
            description=f"member {f} of {folds} of {name}: trained without fold {f}, calibrated on it",
            input_shape=list(data.input_shape),
            latent_dim=model_config.latent_dim,
            likelihood=data.likelihood,
            preprocessing=pre,
            image=data.image,
        )
        parity = max(parity, member_parity)
    oof = [_out_of_fold(staging, splits, f, config, histories[f]) for f in range(folds)]
    engine = cpu_engine(
        save_ensemble(
            staging,
            name=name,
            version=config.version,
            created=created,
            description=f"{model_config.kind.upper()} VAE ensemble of {folds} cross-fitted members trained on "
            f"{data.name} by vaeserve-train",
            cross_fit=splits.cross_fit().model_dump(),
        )
    )
    assert isinstance(engine, EnsembleEngine)
    if len(splits.test):
        (test,) = evaluate(engine, splits.test, [config.eval_k], seed=config.train.seed)
        on = f"the ensemble on the {len(splits.test)} test rows, K={config.eval_k}"
    else:  # in member 0's space, as the ensemble reports its numbers
        log_px = np.concatenate([lp + engine.offsets[f] for f, (lp, _) in enumerate(oof)])
        elbo = np.concatenate([e + engine.offsets[f] for f, (_, e) in enumerate(oof)])
        test = _k_row(config.eval_k, log_px, elbo)
        on = f"out of fold: each of the {len(log_px)} rows scored by the member that never saw it, K={config.eval_k}"
    calibration = calibrate_members(
        engine,
        [splits.calib(f) for f in range(folds)],
        k=config.calib_k,
        seed=config.calib_seed,
        dataset=data.name,
        val_rows=[splits.member(f)[1] for f in range(folds)],
    )
    small = calibration.too_small_for(DEFAULT_ALPHA)
    choices = {**data.choices, "folds": why, "split": splits.rule, "held-out figures": on}
    if picked:
        choices["model"] = picked
    if histories[0].epoch_scale > 1:
        choices["epochs"] = epochs_choice(config.train, histories[0], len(splits.member(0)[0]))
    summary = TrainingSummary(
        dataset=config.data,
        classes=config.classes,
        labels=config.labels,
        label_column=config.label_column,
        n_train=len(splits.pool),
        n_val=0,
        n_test=len(splits.test),
        epochs=max(h.epochs for h in histories),
        best_epoch=histories[0].best_epoch,
        seed=config.train.seed,
        objective=config.train.objective,
        objective_k=config.train.k,
        architecture=model_config.to_dict(),
        test_elbo={"value": test.elbo, "se": test.elbo_se, "k": test.k},
        test_iwae=test.iwae(),
        active_units=active_units(engine, splits.test if len(splits.test) else splits.calib(0)),
        duration_s=round(sum(h.duration_s for h in histories), 1),
        framework=f"torch {torch.__version__}",
        n_calib=calibration.n,
        choices=choices,
        warnings=[small] if small else [],
    )
    bundle = update_manifest(staging, training=summary.model_dump(), calibration=calibration.model_dump())
    seconds = time.perf_counter() - started
    return RunReport(bundle, histories[0], test, test, summary.active_units or 0, parity, calibration, seconds)


def _out_of_fold(
    staging: Path, splits: FoldSplits, f: int, config: RunConfig, history: History
) -> tuple[np.ndarray, np.ndarray]:
    """Member f's log p(x) and ELBO of its fold's rows (in its own model space), recorded in its manifest."""
    train_raw, val_raw = splits.member(f)
    fold = splits.calib(f)
    member = cpu_engine(staging / member_dir(f))
    seeds = np.uint64(config.train.seed) + np.arange(len(fold), dtype=np.uint64)
    result = member.score(member.prepare(fold), ScoreOptions(k=config.eval_k), seeds)
    row = _k_row(config.eval_k, result["log_px"], result["elbo"])
    summary = TrainingSummary(
        dataset=config.data,
        classes=config.classes,
        n_train=len(train_raw),
        n_val=len(val_raw),
        n_test=len(fold),
        epochs=history.epochs,
        best_epoch=history.best_epoch,
        seed=config.train.seed + f,
        objective=config.train.objective,
        objective_k=config.train.k,
        test_elbo={"value": row.elbo, "se": row.elbo_se, "k": row.k},
        test_iwae=row.iwae(),
        duration_s=round(history.duration_s, 1),
        framework=f"torch {torch.__version__}",
        choices={"test rows": f"fold {f}: calibrates this member, trained none of it"},
    )
    update_manifest(staging / member_dir(f), training=summary.model_dump())
    return result["log_px"], result["elbo"]


def _k_row(k: int, log_px: np.ndarray, elbo: np.ndarray) -> KRow:
    def mean_se(v: np.ndarray) -> tuple[float, float]:
        return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")

    (lp, lp_se), (e, e_se) = mean_se(log_px), mean_se(elbo)
    return KRow(k, lp, lp_se, e, e_se, float("nan"), float("nan"))


def calibrate_members(
    engine: EnsembleEngine,
    calib_rows: list[np.ndarray],
    *,
    k: int,
    seed: int,
    dataset: str,
    val_rows: list[np.ndarray] | None = None,
    standardizations: list[Standardization] | None = None,
) -> Calibration:
    """Member f's scores of its calibration rows (raw) with its share of K and its seed, through the served
    path (member 0's preparation, then member f's space); `combined` standardized as given, or on member f's
    validation rows, never on its fold."""
    folds = engine.size
    scores: dict[str, list[float]] = {}
    sizes, used = [], []
    for f, member in enumerate(engine.members):
        scorer = AnomalyScorer(member)
        k_f, seed_f = member_draws(k, folds, f), member_seed(seed, f)
        standardization = standardizations[f] if standardizations else None
        if standardization is None:
            assert val_rows is not None, "give the members' validation rows or their standardizations"
            val = engine.member_input(engine.prepare(flat(val_rows[f])), f)
            standardization = scorer.standardize(val, k=k_f, seed=seed_f, dataset=f"{dataset} (member {f} validation)")
        rows = engine.member_input(engine.prepare(flat(calib_rows[f])), f)
        own = scorer.calibrate(rows, k=k_f, seed=seed_f, dataset=dataset, standardization=standardization)
        for name, values in own.scores.items():
            scores.setdefault(name, []).extend(values)
        sizes.append(own.n)
        used.append(standardization)
    return Calibration(k=k, seed=seed, dataset=dataset, scores=scores, fold_sizes=sizes, standardizations=used)
