"""Loading one version: bundle -> checked engine with sessions, warmed up -> served model (on a thread)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vaeserve.server.boundary.metrics import Metrics
from vaeserve.server.engine import Engine, NoiseCache, RuntimeConfig, load_bundle, open_engine
from vaeserve.server.payload import PayloadLog
from vaeserve.server.repository.model_settings import ModelSettings
from vaeserve.server.serving.model import ServedModel
from vaeserve.server.serving.work_queue import WorkQueue, nice_this_thread
from vaeserve.server.settings import Settings

__all__ = ["ModelLoader"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelLoader:
    """What every model of a process shares: settings, the work queue, the noise cache, the metrics and the
    payload log."""

    settings: Settings
    work: WorkQueue
    noise_cache: NoiseCache
    metrics: Metrics | None = None
    payload: PayloadLog | None = None

    def __call__(self, name: str, version: str, path: Path, model_settings: ModelSettings) -> ServedModel:
        # Built on a thread of the engine's niceness: onnxruntime's own pool threads, started with the
        # sessions, inherit it (the threads that call into the sessions have it from the work queue).
        with ThreadPoolExecutor(1, initializer=nice_this_thread, initargs=(self.work.nice,)) as thread:
            return thread.submit(self._load, name, version, path, model_settings).result()

    def _load(self, name: str, version: str, path: Path, model_settings: ModelSettings) -> ServedModel:
        settings = model_settings.over(self.settings)
        bundle = load_bundle(path)
        runtime = RuntimeConfig(
            device=settings.device,
            strict_device=settings.strict_device,
            intra_op_threads=settings.intra_op_threads,
            allow_spinning=settings.allow_spinning,
        )
        engine = open_engine(bundle, runtime, chunk_samples=settings.chunk_samples, noise_cache=self.noise_cache)
        engine.warm_up()
        background = None
        if bundle.background is not None:
            background = Engine(
                bundle.background, runtime, chunk_samples=settings.chunk_samples, noise_cache=self.noise_cache
            )
            background.warm_up()
        m = bundle.manifest
        if m.name != name:
            log.info("bundle %s names itself %s; served as %s", path, m.name, name)
        log.info(
            "model %s:%s loaded from %s: %s%s likelihood, input %s, latent %d, calibration %s; provider %s",
            name,
            version,
            path,
            f"an ensemble of {len(m.members)} members, " if m.members else "",
            m.likelihood,
            m.input_shape,
            m.latent_dim,
            f"K={m.calibration.k} on {m.calibration.n} inputs ({', '.join(m.calibration.scores)})"
            if m.calibration
            else "none",
            engine.provider,
        )
        served = ServedModel(
            engine,
            settings,
            self.work,
            name=name,
            version=version,
            metrics=self.metrics,
            background=background,
            payload=self.payload,
        )
        for warning in served.warnings:
            log.warning("model %s:%s: %s", name, version, warning)
        return served
