"""Section f of `python -m bench`: what a cross-fitted ensemble costs against one model of the same shape.

The bundled breast-cancer model (or `--ensemble DIR`) is an ensemble of 5 members; its member 0, calibrated
alone on its own fold at the same K, is the single model. Both serve a default Score (the model's K and seed,
its default anomaly scores) of the same rows, in turns on two server processes; reported: inputs/s, the
ratio, peak server memory and the bundles' size on disk.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.processes import VaeServer
from vaeserve.api.bundle import update_manifest
from vaeserve.client import Client
from vaeserve.server.anomaly import AnomalyScorer
from vaeserve.server.engine import Engine, EnsembleEngine, RuntimeConfig, load_bundle
from vaeserve.training.pipeline import bundle_folds

ENSEMBLE = Path(__file__).resolve().parent.parent / "models" / "breast-cancer"


def single_from_member(ensemble: Path, out: Path) -> Path:
    """Member 0 as a format-1 bundle of its own, calibrated on its fold at the ensemble's K and seed."""
    bundle = load_bundle(ensemble)
    calibration = bundle.manifest.calibration
    assert calibration is not None and calibration.standardizations is not None
    shutil.copytree(ensemble / "member-0", out)
    engine = Engine(load_bundle(out), RuntimeConfig(device="cpu"))
    rows = EnsembleEngine(bundle, RuntimeConfig(device="cpu")).prepare(bundle_folds(bundle).calib(0))
    own = AnomalyScorer(engine).calibrate(
        rows,
        k=calibration.k,
        seed=calibration.seed,
        dataset="member 0's fold",
        standardization=calibration.standardizations[0],
    )
    update_manifest(out, calibration=own.model_dump())
    return out


def _size_kb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1024


def section_ensemble(rows: list[dict[str, Any]], ensemble: Path = ENSEMBLE, repeats: int = 5) -> None:
    bundle = load_bundle(ensemble)
    data = bundle_folds(bundle).rows
    x = np.concatenate([data] * max(1, 1000 // len(data)))  # about 1,000 raw rows of its own data
    x = x.reshape(len(x), -1)
    label = f"{bundle.manifest.name} ({len(bundle.members)} members)"
    with tempfile.TemporaryDirectory() as tmp:
        single = single_from_member(ensemble, Path(tmp) / "single")
        servers = {"single": VaeServer(single), "ensemble": VaeServer(ensemble)}
        rates: dict[str, list[float]] = {name: [] for name in servers}
        memory: dict[str, float] = {}
        try:
            clients = {name: Client(s.address, timeout=600) for name, s in servers.items()}
            for client in clients.values():
                client.score(x[:64])  # warm up
            for _ in range(repeats):
                for name, client in clients.items():
                    start = time.perf_counter()
                    reply = client.score(x)
                    rates[name].append(len(x) / (time.perf_counter() - start))
                    assert reply.anomalies, "a default Score gets the default anomaly scores"
            memory = {name: s.rss_mb(peak=True) for name, s in servers.items()}
            for client in clients.values():
                client.close()
        finally:
            for server in servers.values():
                server.stop()
        sizes = {"single": _size_kb(single), "ensemble": _size_kb(ensemble)}
    single_rate, ensemble_rate = (float(np.median(rates[n])) for n in ("single", "ensemble"))
    k = bundle.manifest.calibration.k  # type: ignore[union-attr]
    rows += [
        {
            "section": "f",
            "what": f"default Score (K={k}, anomaly defaults), {label}: one model (member 0 alone)",
            "value": single_rate,
            "unit": "inputs/s",
            "ratio": f"peak server memory {memory['single']:.0f} MB; bundle {sizes['single']:.0f} KB",
        },
        {
            "section": "f",
            "what": f"default Score (K={k}, anomaly defaults), {label}: the ensemble",
            "value": ensemble_rate,
            "unit": "inputs/s",
            "ratio": f"costs {single_rate / ensemble_rate:.2f} x the single model per input (goal <= 1.5); "
            f"peak server memory {memory['ensemble']:.0f} MB; bundle {sizes['ensemble']:.0f} KB",
        },
    ]
