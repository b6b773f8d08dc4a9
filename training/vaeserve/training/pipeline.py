"""One training run end to end: data, fit, export, evaluation and calibration by the server's engine."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from vaeserve.api.bundle import publish_bundle, sha256_of, staging_dir, update_manifest
from vaeserve.api.manifest import MANIFEST_FILE, TrainingSummary
from vaeserve.server.engine import Bundle, load_bundle
from vaeserve.training.crossfit import run_members
from vaeserve.training.data import (
    BOUNDED,
    BUILTIN,
    DEFAULT_SPLIT,
    Dataset,
    Splits,
    load_dataset,
    make_splits,
    select_classes,
)
from vaeserve.training.evaluate import active_units, calibrate, evaluate
from vaeserve.training.export import export_bundle
from vaeserve.training.fitting import epochs_choice, fit_best, flat
from vaeserve.training.folds import FoldSplits, default_folds, make_folds
from vaeserve.training.models import VAEConfig, build_model
from vaeserve.training.runs import DEFAULT_ALPHA, RunConfig, RunReport, cpu_engine, cpu_scorer, load_run_data
from vaeserve.training.train import fit, resolve_device, seed_everything

__all__ = [
    "BACKGROUND_DIR",
    "DEFAULT_ALPHA",
    "RunConfig",
    "RunReport",
    "bundle_folds",
    "bundle_splits",
    "cpu_engine",
    "cpu_scorer",
    "load_for_bundle",
    "load_run_data",
    "run",
]

BACKGROUND_DIR = "background"


def _splits(config: RunConfig) -> tuple[Dataset, Splits]:
    data = load_run_data(config)
    return data, make_splits(data, config.train.seed, classes=config.classes, fractions=config.split)


def load_for_bundle(
    bundle: Bundle, source: str, *, labels: str | None = None, label_column: str | None = None
) -> Dataset:
    """Data for an existing bundle, read as the bundle reads its inputs (its likelihood, layout and range)."""
    m = bundle.manifest
    pre = m.preprocessing
    builtin = source in BUILTIN
    bernoulli_range = (pre.shift[0], pre.shift[0] + 1 / pre.scale[0]) if len(pre.shift) == len(pre.scale) == 1 else None
    return load_dataset(
        source,
        likelihood=m.likelihood,
        labels=labels,
        label_column=label_column,
        image=(m.image.channels, m.image.height, m.image.width) if m.image and not builtin else None,
        value_range=bernoulli_range if m.bounded and not builtin else None,
    )


def bundle_splits(bundle: Bundle, data: str | None = None) -> Splits:
    """The splits a bundle was trained with (same data set, seed and classes as its training summary). For an
    ensemble, member 0's (whose preprocessing the ensemble reports in): its training and validation rows, the
    rows that calibrate a member but trained none, and the test rows held out from every member."""
    if bundle.manifest.cross_fit is not None:
        folds = bundle_folds(bundle, data)
        train, val = folds.member(0)
        return Splits(train, val, folds.rows[folds.added], folds.test, bundle.manifest.preprocessing, folds.rule)
    summary = bundle.manifest.training
    source = data or (summary.dataset if summary else None)
    if source is None:
        raise ValueError(f"{bundle.path}: no training summary; name the data to use")
    dataset = load_for_bundle(
        bundle,
        source,
        labels=summary.labels if summary else None,
        label_column=summary.label_column if summary else None,
    )
    counts = (summary.n_val, summary.n_calib, summary.n_test) if summary and summary.n_calib is not None else None
    return make_splits(
        dataset,
        summary.seed if summary else 0,
        classes=summary.classes if summary else None,
        counts=counts,
        fractions=None if counts else DEFAULT_SPLIT,  # bundles from before the calibration rule: 10 % each
    )


def bundle_folds(bundle: Bundle, data: str | None = None) -> FoldSplits:
    """An ensemble's folds, rebuilt from its data set and the fold of every row its manifest stores."""
    m = bundle.manifest
    summary = m.training
    source = data or (summary.dataset if summary else None)
    if source is None or m.cross_fit is None:
        raise ValueError(f"{bundle.path}: no training summary and folds; name the data to use")
    labels = (summary.labels, summary.label_column) if summary else (None, None)
    dataset = load_for_bundle(bundle, source, labels=labels[0], label_column=labels[1])
    classes = summary.classes if summary else None
    return make_folds(
        dataset, summary.seed if summary else 0, m.cross_fit.folds, classes=classes, cross_fit=m.cross_fit
    )


def run(config: RunConfig) -> RunReport:
    """Trains, exports, evaluates and calibrates in a hidden staging directory beside `config.out`, then
    publishes the finished bundle there by one rename: a repository being polled never sees half a bundle."""
    data = load_run_data(config)
    config.dataset = data
    rows = len(data.x if config.classes is None else select_classes(data, config.classes))
    if config.folds is None and config.background:
        folds, why = 1, "one model: --background trains the likelihood_ratio score of a single model"
    else:
        folds, why = (config.folds, _asked(config.folds)) if config.folds is not None else default_folds(rows)
    if folds < 1:
        raise ValueError(f"--folds must be at least 1, got {folds}")
    if folds > 1 and config.background:
        raise ValueError("--background trains the likelihood_ratio score of a single model; use it with --folds 1")
    staging = staging_dir(config.out)
    try:
        config.train.device = resolve_device(config.train.device)
        report = run_members(config, staging, data, folds, why) if folds > 1 else _run(config, staging, why)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report.bundle = load_bundle(publish_bundle(staging, config.out))
    return report


def _asked(folds: int) -> str:
    if folds == 1:
        return "one model (--folds 1): a held-out calibration split, split conformal"
    return f"{folds} cross-fitted members (--folds {folds}): every row trains {folds - 1} and calibrates one"


def _run(config: RunConfig, staging: Path, why: str) -> RunReport:
    started = time.perf_counter()
    data, splits = _splits(config)
    config.train.device = resolve_device(config.train.device)
    model_config = config.model or VAEConfig(input_shape=data.input_shape)
    model_config.input_shape, model_config.likelihood = data.input_shape, data.likelihood
    if data.likelihood == "logistic":
        model_config.level_width = splits.preprocessing.scale[0]  # one raw level in model space
    pre = splits.preprocessing
    train = pre.apply(flat(splits.train)).reshape(splits.train.shape)
    val = pre.apply(flat(splits.val)).reshape(splits.val.shape)
    model, history, model_config, picked = fit_best(model_config, train, val, config.train)
    model = model.cpu()
    name = config.name or data.name.removesuffix(".npy").removesuffix(".csv")
    bundle, parity = export_bundle(
        model,
        staging,
        pre.apply(flat(splits.test)),
        name=name,
        version=config.version,
        created=datetime.now(UTC).replace(microsecond=0),
        description=f"{model_config.kind.upper()} VAE trained on {data.name} by vaeserve-train",
        input_shape=list(data.input_shape),
        latent_dim=model_config.latent_dim,
        likelihood=data.likelihood,
        preprocessing=pre,
        image=data.image,
    )
    choices = {**data.choices, "folds": why, "split": splits.rule, **({"model": picked} if picked else {})}
    if history.epoch_scale > 1:
        choices["epochs"] = epochs_choice(config.train, history, len(train))
    if config.background:
        bundle = _train_background(config, model_config, splits, name, staging)
        choices["background"] = (
            f"a second VAE of the same shape on the normal data with {config.background_noise:.0%} of each "
            "input's features replaced by noise (the likelihood_ratio score's background model)"
        )
    engine = cpu_engine(bundle)
    (test_iwae,) = evaluate(engine, splits.test, [config.eval_k], seed=config.train.seed)
    test_elbo = test_iwae  # the ELBO columns come from the same K draws per input
    units = active_units(engine, splits.test)
    calibration = calibrate(
        cpu_scorer(bundle, engine),
        splits.calib,
        k=config.calib_k,
        seed=config.calib_seed,
        dataset=data.name,
        standardize_on=(splits.val, f"{data.name} (validation split)"),
    )
    small = calibration.too_small_for(DEFAULT_ALPHA)
    summary = TrainingSummary(
        dataset=config.data,
        classes=config.classes,
        labels=config.labels,
        label_column=config.label_column,
        n_train=len(splits.train),
        n_val=len(splits.val),
        n_test=len(splits.test),
        epochs=history.epochs,
        best_epoch=history.best_epoch,
        seed=config.train.seed,
        objective=config.train.objective,
        objective_k=config.train.k,
        architecture=model_config.to_dict(),
        test_elbo={"value": test_elbo.elbo, "se": test_elbo.elbo_se, "k": test_elbo.k},
        test_iwae=test_iwae.iwae(),
        active_units=units,
        duration_s=round(history.duration_s, 1),
        framework=f"torch {torch.__version__}",
        n_calib=len(splits.calib),
        choices=choices,
        warnings=[small] if small else [],
    )
    bundle = load_bundle(
        update_manifest(bundle.path, training=summary.model_dump(), calibration=calibration.model_dump())
    )
    return RunReport(bundle, history, test_iwae, test_elbo, units, parity, calibration, time.perf_counter() - started)


def _train_background(config: RunConfig, model_config: VAEConfig, splits: Splits, name: str, staging: Path) -> Bundle:
    """Trains the background model on perturbed normal data into staging/background (Ren et al. 2019)."""
    pre = splits.preprocessing
    rng = np.random.default_rng(config.train.seed + 1)
    train = _perturbed(pre.apply(flat(splits.train)), config.background_noise, model_config.likelihood, rng)
    val = _perturbed(pre.apply(flat(splits.val)), config.background_noise, model_config.likelihood, rng)
    seed_everything(config.train.seed + 1)
    model = build_model(model_config)
    fit(
        model,
        train.reshape(splits.train.shape),
        val.reshape(splits.val.shape),
        replace(config.train, seed=config.train.seed + 1),
    )
    model = model.cpu()
    export_bundle(
        model,
        staging / BACKGROUND_DIR,
        pre.apply(flat(splits.test)),
        name=f"{name}-background",
        version=config.version,
        created=datetime.now(UTC).replace(microsecond=0),
        description=f"background model of {name}: trained on perturbed normal data by vaeserve-train",
        input_shape=list(splits.train.shape[1:]),
        latent_dim=model_config.latent_dim,
        likelihood=model_config.likelihood,
        preprocessing=pre,
        image=load_bundle(staging).manifest.image,
    )
    manifest = load_bundle(staging).manifest
    relative = f"{BACKGROUND_DIR}/{MANIFEST_FILE}"
    return load_bundle(
        update_manifest(
            staging, background=BACKGROUND_DIR, sha256={**manifest.sha256, relative: sha256_of(staging / relative)}
        )
    )


def _perturbed(x: np.ndarray, rate: float, likelihood: str, rng: np.random.Generator) -> np.ndarray:
    """Each feature replaced with probability `rate` by noise: a uniform value in [0, 1] for Bernoulli data,
    the same feature of a random training row for standardised tables."""
    replace_mask = rng.random(x.shape) < rate
    bounded = likelihood in BOUNDED
    noise = rng.random(x.shape).astype(np.float32) if bounded else x[rng.integers(0, len(x), size=len(x))]
    return np.where(replace_mask, noise, x).astype(np.float32)
