"""The committed gRPC stubs are exactly what the committed .proto generates (`make proto`)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PROTOS = {"vaeserve/api/v1": "vae", "vaeserve/api/v2": "grpc_predict_v2"}


@pytest.mark.parametrize(("package", "stem"), PROTOS.items())
def test_regenerating_the_stubs_changes_nothing(tmp_path: Path, package: str, stem: str) -> None:
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
            str(proto / package / f"{stem}.proto"),
        ],
        check=True,
        capture_output=True,
        env={"PATH": str(Path(sys.executable).parent)},
    )
    for name in (f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py", f"{stem}_pb2_grpc.pyi"):
        fresh, committed = tmp_path / package / name, proto / package / name
        assert filecmp.cmp(fresh, committed, shallow=False), f"{committed} is stale: run `make proto`"
