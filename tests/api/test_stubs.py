"""The committed gRPC stubs are exactly what the committed .proto generates (`make proto`)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

GENERATED = ["vae_pb2.py", "vae_pb2.pyi", "vae_pb2_grpc.py", "vae_pb2_grpc.pyi"]


def test_regenerating_the_stubs_changes_nothing(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    proto = REPO / "proto"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(proto),
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--mypy_out={tmp_path}",
            f"--mypy_grpc_out={tmp_path}",
            str(proto / "vaeserve/api/v1/vae.proto"),
        ],
        check=True,
        capture_output=True,
        env={"PATH": str(Path(sys.executable).parent)},
    )
    for name in GENERATED:
        fresh, committed = tmp_path / "vaeserve/api/v1" / name, proto / "vaeserve/api/v1" / name
        assert filecmp.cmp(fresh, committed, shallow=False), f"{committed} is stale: run `make proto`"
