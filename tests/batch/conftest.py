"""vaeserve-batch's fixtures: a real two-node Ray cluster on this machine, and input files of every kind.

The cluster is a head and a second node, one CPU each, started with `ray start --block` in their own
process groups, which the fixture ends after the session. Everything listens on the loopback address
127.0.0.2: Ray replaces 127.0.0.1 by the host's network address, any other loopback address it keeps.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# Collected only where Ray is installed (make test-batch's .venv-batch); the default run has no Ray.
collect_ignore_glob = [] if importlib.util.find_spec("ray") else ["test_*.py"]

LOOPBACK = "127.0.0.2"
DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits"
# Token authentication guards clusters reachable from a network; this one is not, and its drivers carry no token.
# A multi-node cluster, even where a test's command line has asked for a loopback-only local instance.
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
}


@dataclass(frozen=True)
class Inputs:
    """120 digit-like rows (the digits model's decoded means of prior draws, 0-16) spread over five files
    of four formats: a.npy 0-39, b.csv 40-69, shards/ (Parquet list 70-89, Parquet columns 90-104, IDX 105-119)."""

    rows: np.ndarray  # [120, 8, 8] raw units
    files: list[Path]  # the command line's inputs: a.npy, b.csv, shards/
    sources: list[str]  # each row's file, in order
    index: np.ndarray  # each row's index in its file


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """The address of a running two-node cluster with 2 CPUs."""
    import ray

    # Its own temp dir, short for Ray's socket paths: sessions, logs and the address file stay out of /tmp/ray.
    temp = Path(tempfile.mkdtemp(prefix="vb-ray-"))
    port = _free_port()
    address = f"{LOOPBACK}:{port}"
    common = ["--node-ip-address", LOOPBACK, "--num-cpus", "1", "--object-store-memory", str(200 << 20)]
    head = ["--head", "--port", str(port), "--temp-dir", str(temp), "--include-dashboard", "false"]
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        nodes.append(_ray_start([*head, *common], temp / "head.log"))
        nodes.append(_ray_start(["--address", address, *common], temp / "node.log"))
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        deadline = time.monotonic() + 90
        while ray.cluster_resources().get("CPU", 0) < 2:  # type: ignore[no-untyped-call]
            assert time.monotonic() < deadline, f"the second node did not join (logs in {temp})"
            time.sleep(0.5)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2  # type: ignore[no-untyped-call]
        ray.shutdown()
        yield address
    finally:
        ray.shutdown()
        for node in reversed(nodes):
            node.terminate()  # ray start --block stops the processes it started (RAY_ENV: no draining)
        for node in reversed(nodes):
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait(10)
        shutil.rmtree(temp, ignore_errors=True)


def _ray_start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    ray = Path(sys.executable).with_name("ray")
    with log.open("wb") as out:
        node = subprocess.Popen(
            [str(ray), "start", *args, "--disable-usage-stats", "--block"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **RAY_ENV},
            start_new_session=True,
        )
    deadline = time.monotonic() + 90
    while b"Ray runtime started" not in log.read_bytes():
        if node.poll() is not None or time.monotonic() > deadline:
            node.kill()
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    return node


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(scope="session")
def digit_rows() -> np.ndarray:
    from vaeserve.batch.scoring import RowScorer

    engine = RowScorer(DIGITS, warm_up=False).engine
    z = np.random.default_rng(0).standard_normal((120, engine.manifest.latent_dim)).astype(np.float32)
    return np.round(engine.decode(z)["probs"] * 16.0).reshape(120, 8, 8)


@pytest.fixture(scope="session")
def inputs(digit_rows: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("inputs")
    rows, flat = digit_rows, digit_rows.reshape(120, 64)
    labels = np.arange(120) % 10
    np.save(root / "a.npy", rows[:40])
    header = ",".join([*(f"p{i}" for i in range(64)), "label"])
    lines = [",".join(f"{v:g}" for v in [*flat[i], labels[i]]) for i in range(40, 70)]
    (root / "b.csv").write_text("\n".join([header, *lines]) + "\n")
    shards = root / "shards"
    shards.mkdir()
    table = pa.table({"label": labels[70:90], "x": pa.array(list(flat[70:90]), pa.list_(pa.float64()))})
    pq.write_table(table, shards / "part-0.parquet")
    pq.write_table(
        pa.table({**{f"p{i}": flat[90:105, i] for i in range(64)}, "label": labels[90:105]}), shards / "part-1.parquet"
    )
    idx = struct.pack(">BBBBIII", 0, 0, 0x08, 3, 15, 8, 8) + rows[105:120].astype(np.uint8).tobytes()
    (shards / "part-2-idx3-ubyte.gz").write_bytes(gzip.compress(idx))
    (shards / "README.txt").write_text("not data: skipped\n")
    np.save(shards / ".hidden.npy", rows[:3])  # hidden: skipped
    files = [
        root / "a.npy",
        root / "b.csv",
        shards / "part-0.parquet",
        shards / "part-1.parquet",
        shards / "part-2-idx3-ubyte.gz",
    ]
    counts = [40, 30, 20, 15, 15]
    sources = [str(f) for f, n in zip(files, counts) for _ in range(n)]
    index = np.concatenate([np.arange(n) for n in counts])
    return Inputs(rows, [root / "a.npy", root / "b.csv", shards], sources, index)
