"""One training run end to end: data, fit, export, evaluation and calibration by the server's engine."""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from vaeserve.api.manifest import Calibration, TrainingSummary
from vaeserve.server.anomaly import AnomalyScorer
from vaeserve.server.engine import Bundle, Engine, RuntimeConfig, load_bundle, publish_bundle
from vaeserve.server.engine.bundle import staging_dir, update_manifest
from vaeserve.training.data import Dataset, Likelihood, Splits, load_dataset, make_splits
from vaeserve.training.evaluate import KRow, active_units, calibrate, evaluate
from vaeserve.training.export import export_bundle
from vaeserve.training.models import VAEConfig, build_model
from vaeserve.training.train import History, TrainConfig, fit, resolve_device, seed_everything

__all__ = ["RunConfig", "RunReport", "bundle_splits", "cpu_engine", "cpu_scorer", "run"]


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
    eval_k: int = 5000
    calib_k: int = 1000
    calib_seed: int = 0


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


def _splits(config: RunConfig) -> tuple[Dataset, Splits]:
    data = load_dataset(
        config.data,
        likelihood=config.likelihood,
        labels=config.labels,
        label_column=config.label_column,
    )
    return data, make_splits(data, config.train.seed, classes=config.classes)


def bundle_splits(bundle: Bundle, data: str | None = None) -> Splits:
    """The splits a bundle was trained with (same data set, seed and classes as its training summary)."""
    summary = bundle.manifest.training
    source = data or (summary.dataset if summary else None)
    if source is None:
        raise ValueError(f"{bundle.path}: no training summary; name the data to use")
    likelihood = bundle.manifest.likelihood
    dataset = load_dataset(
        source,
        likelihood=likelihood,
        labels=summary.labels if summary else None,
        label_column=summary.label_column if summary else None,
    )
    return make_splits(dataset, summary.seed if summary else 0, classes=summary.classes if summary else None)


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
    seed_everything(config.train.seed)
    model = build_model(model_config)
    pre = splits.preprocessing
    history = fit(
        model,
        pre.apply(_flat(splits.train)).reshape(splits.train.shape),
        pre.apply(_flat(splits.val)).reshape(splits.val.shape),
        config.train,
    )
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
    engine = cpu_engine(bundle)
    (test_iwae,) = evaluate(engine, splits.test, [config.eval_k], seed=config.train.seed)
    test_elbo = test_iwae  # the ELBO columns come from the same K draws per input
    units = active_units(engine, splits.test)
    calibration = calibrate(
        AnomalyScorer(engine), splits.calib, k=config.calib_k, seed=config.calib_seed, dataset=data.name
    )
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
    )
    bundle = update_manifest(bundle.path, training=summary.model_dump(), calibration=calibration.model_dump())
    return RunReport(bundle, history, test_iwae, test_elbo, units, parity, calibration, time.perf_counter() - started)


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), int(math.prod(x.shape[1:])))
