"""A cross-fitted training run: F members, each trained without its fold and calibrated on it (format 2).

The members are written as format-1 bundles in member-<f>/ of the staging directory, then the
ensemble's manifest over them; evaluation and calibration go through the served ensemble engine, so
a calibration row is scored exactly as a served request scores a new input. The held-out figures of the
summary are out-of-fold: each row scored by the member that never saw it (or the ensemble's on the test
rows, when --split holds some out).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaeserve.api.bundle import save_ensemble, update_manifest
from vaeserve.api.manifest import Calibration, Standardization, TrainingSummary, member_dir, member_draws, member_seed
from vaeserve.server.anomaly import AnomalyScorer
from vaeserve.server.engine import EnsembleEngine, ScoreOptions, load_bundle
from vaeserve.training.data import Dataset
from vaeserve.training.evaluate import KRow, active_units, evaluate, mean_se
from vaeserve.training.export import export_bundle
from vaeserve.training.fitting import epochs_choice, fit_best, flat
from vaeserve.training.folds import FoldSplits, make_folds
from vaeserve.training.models import VAEConfig
from vaeserve.training.runs import DEFAULT_ALPHA, RunConfig, RunReport, cpu_engine
from vaeserve.training.train import History, TrainConfig

__all__ = ["calibrate_members", "run_members"]


def run_members(config: RunConfig, staging: Path, data: Dataset, folds: int, why: str) -> RunReport:
    started = time.perf_counter()
    splits = make_folds(data, config.train.seed, folds, classes=config.classes, fractions=config.split)
    model_config = config.model or VAEConfig(input_shape=data.input_shape)
    model_config.input_shape, model_config.likelihood = data.input_shape, data.likelihood
    name = config.name or data.name.removesuffix(".npy").removesuffix(".csv")
    created = datetime.now(UTC).replace(microsecond=0)
    jobs = []
    for f in range(folds):
        train_raw, val_raw = splits.member(f)
        pre = splits.preprocessing(f)
        member_config = replace(model_config)
        if data.likelihood == "logistic":
            member_config.level_width = pre.scale[0]
        manifest = {
            "name": f"{name}-member-{f}",
            "version": config.version,
            "created": created,
            "description": f"member {f} of {folds} of {name}: trained without fold {f}, calibrated on it",
            "input_shape": list(data.input_shape),
            "likelihood": data.likelihood,
            "preprocessing": pre,
            "image": data.image,
        }
        jobs.append(
            _MemberJob(
                train=pre.apply(flat(train_raw)).reshape(train_raw.shape),
                val=pre.apply(flat(val_raw)).reshape(val_raw.shape),
                check=pre.apply(flat(splits.calib(f))),
                model=member_config,
                train_config=replace(config.train, seed=config.train.seed + f),  # members differ in their start
                out=staging / member_dir(f),
                manifest=manifest,
            )
        )
    results = _train_members(jobs)
    histories = [r.history for r in results]
    model_config, picked = results[0].model, results[0].choice
    parity = max(r.parity for r in results)
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
    bundle = load_bundle(update_manifest(staging, training=summary.model_dump(), calibration=calibration.model_dump()))
    seconds = time.perf_counter() - started
    return RunReport(bundle, histories[0], test, test, summary.active_units or 0, parity, calibration, seconds)


# Row-epochs of training below which the members train one after another here: a worker process takes a few
# seconds to start (it imports torch), more than a short run gains from a second core.
_WORTH_A_WORKER = 20_000


@dataclass(frozen=True)
class _MemberJob:
    train: np.ndarray  # model space, member f's own
    val: np.ndarray
    check: np.ndarray  # rows the export compares onnxruntime with torch on (its fold)
    model: VAEConfig
    train_config: TrainConfig
    out: Path
    manifest: dict[str, Any]  # the member bundle's manifest fields
    threads: int = 0  # torch's intra-op threads (0: torch's default)


@dataclass(frozen=True)
class _Trained:
    history: History
    model: VAEConfig  # as fitted: with kind "auto", the kind it chose
    choice: str
    parity: float


def _train_member(job: _MemberJob) -> _Trained:
    if job.threads:
        torch.set_num_threads(job.threads)
    model, history, chosen, choice = fit_best(job.model, job.train, job.val, job.train_config)
    _, parity = export_bundle(model.cpu(), job.out, job.check, latent_dim=chosen.latent_dim, **job.manifest)
    return _Trained(history, chosen, choice, parity)


def _train_members(jobs: list[_MemberJob]) -> list[_Trained]:
    """The members, trained side by side in worker processes, one per core (a small model's training is
    mostly per-step overhead, which more threads do not shorten): about F / cores times one model's time.
    With --model auto, member 0 picks the kind first and every other member trains that kind."""
    first = jobs[0]
    done: list[_Trained] = []
    if first.model.kind == "auto":
        done.append(_train_member(first))
        jobs = [replace(job, model=replace(job.model, kind=done[0].model.kind)) for job in jobs[1:]]
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers <= 1 or sum(len(job.train) * job.train_config.epochs for job in jobs) < _WORTH_A_WORKER:
        return done + [_train_member(job) for job in jobs]
    threads = max(1, (os.cpu_count() or 1) // workers)
    quiet = [replace(job, threads=threads, train_config=replace(job.train_config, progress=False)) for job in jobs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return done + list(pool.map(_train_member, quiet))


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
