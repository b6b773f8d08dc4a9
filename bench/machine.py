"""The bench every section shares: the model under test, the server's extra flags, the machine's description,
and the ceilings a throughput is compared with (the matmul roofline, an IWAE's FLOPs)."""

from __future__ import annotations

import datetime
import itertools
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

__all__ = ["BUNDLE", "REPO", "SERVER_FLAGS", "iwae_flops", "machine", "matmul_gflops", "rate"]

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "models" / "mnist5k"
SERVER_FLAGS: list[str] = os.environ.get("BENCH_SERVER_FLAGS", "").split()


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**20, 1),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def matmul_gflops(n: int = 4096, repeats: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def iwae_flops(bundle_dim: int, hidden: list[int], latent: int, k: int) -> float:
    """Multiply-adds x 2 of one IWAE estimate: the encoder once, the decoder K times."""
    enc = [bundle_dim, *hidden, 2 * latent]
    dec = [latent, *hidden[::-1], bundle_dim]
    macs = sum(a * b for a, b in itertools.pairwise(enc)) + k * sum(a * b for a, b in itertools.pairwise(dec))
    return 2.0 * macs


def rate(n: int, run: Callable[[], object]) -> float:
    """n items over the seconds one call of `run` takes."""
    start = time.perf_counter()
    run()
    return n / (time.perf_counter() - start)
