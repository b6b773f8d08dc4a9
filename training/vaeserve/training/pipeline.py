"""One training run end to end: data, fit, export, evaluation and calibration by the server's engine."""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from vaeserve.api.manifest import MANIFEST_FILE, Calibration, TrainingSummary
from vaeserve.server.anomaly import AnomalyScorer
from vaeserve.server.engine import Bundle, Engine, RuntimeConfig, load_bundle, publish_bundle
from vaeserve.server.engine.bundle import sha256_of, staging_dir, update_manifest
from vaeserve.training.data import (
    BOUNDED,
    BUILTIN,
    DEFAULT_SPLIT,
    Dataset,
    Likelihood,
    Splits,
    load_dataset,
    make_splits,
)
from vaeserve.training.evaluate import KRow, active_units, calibrate, evaluate
from vaeserve.training.export import export_bundle
from vaeserve.training.models import VAE, VAEConfig, build_model
from vaeserve.training.train import History, TrainConfig, fit, resolve_device, seed_everything

__all__ = [
    "BACKGROUND_DIR",
    "DEFAULT_ALPHA",
    "RunConfig",
    "RunReport",
    "bundle_splits",
    "cpu_engine",
    "cpu_scorer",
    "load_for_bundle",
    "load_run_data",
    "run",
]

BACKGROUND_DIR = "background"
DEFAULT_ALPHA = 0.01  # the server's default level of the anomaly flags


@dataclass
class RunConfig:
    data: str
    out: Path
    model: VAEConfig | None = None  # input shape and likelihood are filled in from the data
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str | None = None
    version: str = "1"
    classes: list[int] | None = None
    likelihood: Likelihood | None = None
    labels: str | None = None
    label_column: str | None = None
    image: tuple[int, int, int] | None = None
    value_range: tuple[float, float] | None = None
    split: tuple[float, float, float] | None = None  # val, calib, test fractions (default: the rule in data.py)
    background: bool = False  # also train the likelihood_ratio score's background model
    background_noise: float = 0.2  # the fraction of features the background model's data has replaced by noise
    eval_k: int = 5000
    calib_k: int = 1000
    calib_seed: int = 0
    dataset: Dataset | None = None  # already loaded from `data` (the CLI loads it to find the preset)


@dataclass
class RunReport:
    bundle: Bundle
    history: History
    test: KRow
    test_elbo: KRow
    active_units: int
    parity: float
    calibration: Calibration
    seconds: float


def cpu_engine(bundle: Bundle | Path) -> Engine:
    """The serving engine on CPU, as training and evaluation use it."""
    return Engine(bundle if isinstance(bundle, Bundle) else load_bundle(bundle), RuntimeConfig(device="cpu"))


def cpu_scorer(bundle: Bundle | Path) -> AnomalyScorer:
    """The served anomaly scores of a bundle (with its background model, when it has one), on CPU."""
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    background = cpu_engine(loaded.background) if loaded.background is not None else None
    return AnomalyScorer(cpu_engine(loaded), background)


def load_run_data(config: RunConfig) -> Dataset:
    return config.dataset or load_dataset(
        config.data,
        likelihood=config.likelihood,
        labels=config.labels,
        label_column=config.label_column,
        image=config.image,
        value_range=config.value_range,
    )


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
    """The splits a bundle was trained with (same data set, seed and classes as its training summary)."""
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


def run(config: RunConfig) -> RunReport:
    """Trains, exports, evaluates and calibrates in a hidden staging directory beside `config.out`, then
    publishes the finished bundle there by one rename: a repository being polled never sees half a bundle."""
    staging = staging_dir(config.out)
    try:
        report = _run(config, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report.bundle = publish_bundle(staging, config.out)
    return report


def _run(config: RunConfig, staging: Path) -> RunReport:
    started = time.perf_counter()
    data, splits = _splits(config)
    config.train.device = resolve_device(config.train.device)
    model_config = config.model or VAEConfig(input_shape=data.input_shape)
    model_config.input_shape, model_config.likelihood = data.input_shape, data.likelihood
    if data.likelihood == "logistic":
        model_config.level_width = splits.preprocessing.scale[0]  # one raw level in model space
    pre = splits.preprocessing
    train = pre.apply(_flat(splits.train)).reshape(splits.train.shape)
    val = pre.apply(_flat(splits.val)).reshape(splits.val.shape)
    model, history, model_config, picked = _fit_best(model_config, train, val, config.train)
    model = model.cpu()
    name = config.name or data.name.removesuffix(".npy").removesuffix(".csv")
    bundle, parity = export_bundle(
        model,
        staging,
        pre.apply(_flat(splits.test)),
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
    choices = {**data.choices, "split": splits.rule, **({"model": picked} if picked else {})}
    if history.epoch_scale > 1:
        t, s = config.train, history.epoch_scale
        choices["epochs"] = (
            f"at most {t.epochs * s}, warm-up {t.warmup_epochs * s}, patience {t.patience * s}: {t.epochs} / "
            f"{t.warmup_epochs} / {t.patience} x {s}, as {len(train)} training rows make "
            f"{math.ceil(len(train) / t.batch_size)} batches of {t.batch_size} per epoch, fewer than {t.min_batches} "
            "(set --epochs, --warmup or --patience to take the counts as given)"
        )
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
    background = cpu_engine(bundle.background) if bundle.background is not None else None
    calibration = calibrate(
        AnomalyScorer(engine, background),
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
    bundle = update_manifest(bundle.path, training=summary.model_dump(), calibration=calibration.model_dump())
    return RunReport(bundle, history, test_iwae, test_elbo, units, parity, calibration, time.perf_counter() - started)


def _fit_best(
    model_config: VAEConfig, train: np.ndarray, val: np.ndarray, train_config: TrainConfig
) -> tuple[VAE, History, VAEConfig, str]:
    """Fits the model; with kind "auto", an MLP and a convolutional model (where the image's sides allow one)
    and keeps the one with the better validation ELBO: normal held-out data only, the same likelihood, so
    the two are compared in the same units. Returns the model, its history, its config and the choice."""
    auto = model_config.kind == "auto"
    kinds: list[Literal["mlp", "conv", "auto"]] = ["mlp", "conv"] if auto else [model_config.kind]
    if auto and not _conv_fits(model_config):
        kinds = ["mlp"]
    fitted = []
    for kind in kinds:
        candidate = replace(model_config, kind=kind)
        seed_everything(train_config.seed)
        model = build_model(candidate)
        history = fit(model, train, val, train_config)
        fitted.append((history.val_elbo[history.best_epoch - 1], kind, model, history, candidate))
    _, kind, model, history, chosen = max(fitted, key=lambda f: f[0])
    if not auto:
        return model, history, chosen, ""
    if len(fitted) == 1:
        return model, history, chosen, "mlp: the input is not an image a conv model takes"
    scores = ", ".join(f"{k} {e:.3f}" for e, k, *_ in fitted)
    return model, history, chosen, f"{kind}: the better validation ELBO per input ({scores} nats)"


def _conv_fits(config: VAEConfig) -> bool:
    shape, layers = config.input_shape, len(config.channels)
    return len(shape) == 3 and shape[1] % 2**layers == 0 and shape[2] % 2**layers == 0


def _train_background(config: RunConfig, model_config: VAEConfig, splits: Splits, name: str, staging: Path) -> Bundle:
    """Trains the background model on perturbed normal data into staging/background (Ren et al. 2019)."""
    pre = splits.preprocessing
    rng = np.random.default_rng(config.train.seed + 1)
    train = _perturbed(pre.apply(_flat(splits.train)), config.background_noise, model_config.likelihood, rng)
    val = _perturbed(pre.apply(_flat(splits.val)), config.background_noise, model_config.likelihood, rng)
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
        pre.apply(_flat(splits.test)),
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
    return update_manifest(
        staging, background=BACKGROUND_DIR, sha256={**manifest.sha256, relative: sha256_of(staging / relative)}
    )


def _perturbed(x: np.ndarray, rate: float, likelihood: str, rng: np.random.Generator) -> np.ndarray:
    """Each feature replaced with probability `rate` by noise: a uniform value in [0, 1] for Bernoulli data,
    the same feature of a random training row for standardised tables."""
    replace_mask = rng.random(x.shape) < rate
    bounded = likelihood in BOUNDED
    noise = rng.random(x.shape).astype(np.float32) if bounded else x[rng.integers(0, len(x), size=len(x))]
    return np.where(replace_mask, noise, x).astype(np.float32)


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), int(math.prod(x.shape[1:])))
