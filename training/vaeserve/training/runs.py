"""What a training run is given and what it reports, and the engine and scorer it evaluates bundles with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vaeserve.api.manifest import Calibration
from vaeserve.server.anomaly import AnomalyScorer, open_scorer
from vaeserve.server.engine import Bundle, Engine, EnsembleEngine, RuntimeConfig, load_bundle, open_engine
from vaeserve.training.data import Dataset, Likelihood, load_dataset
from vaeserve.training.evaluate import KRow
from vaeserve.training.models import VAEConfig
from vaeserve.training.train import History, TrainConfig

__all__ = ["DEFAULT_ALPHA", "RunConfig", "RunReport", "cpu_engine", "cpu_scorer", "load_run_data"]

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
    folds: int | None = None  # cross-fitted members (None: by the data's size, folds.default_folds; 1: one model)


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


def cpu_engine(bundle: Bundle | Path) -> Engine | EnsembleEngine:
    """The serving engine (of either bundle format) on CPU, as training and evaluation use it."""
    return open_engine(bundle if isinstance(bundle, Bundle) else load_bundle(bundle), RuntimeConfig(device="cpu"))


def cpu_scorer(bundle: Bundle | Path, engine: Engine | EnsembleEngine | None = None) -> AnomalyScorer:
    """The served anomaly scores of a bundle (with its background model, when it has one), on CPU; `engine`:
    the bundle's engine, when the caller has one already (its sessions are not built twice)."""
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    background = cpu_engine(loaded.background) if loaded.background is not None else None
    assert not isinstance(background, EnsembleEngine)
    return open_scorer(engine or cpu_engine(loaded), background)


def load_run_data(config: RunConfig) -> Dataset:
    return config.dataset or load_dataset(
        config.data,
        likelihood=config.likelihood,
        labels=config.labels,
        label_column=config.label_column,
        image=config.image,
        value_range=config.value_range,
    )
