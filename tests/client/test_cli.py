"""The `vaeserve` command line end to end on the bundled digits model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from tests.serving import RunningServer
from vaeserve.client import Client
from vaeserve.client.cli import main


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.npy"
    np.save(path, load_digits().data[:40])
    return path


def run(server: RunningServer, *args: str) -> int:
    return main(["--target", server.address, *args])


def test_info_table_and_json(digits_server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(digits_server, "info") == 0
    out = capsys.readouterr().out
    assert "digits:1" in out and "1 x 8 x 8" in out and "calibration" in out and "bernoulli" in out
    assert run(digits_server, "info", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["manifest"]["name"] == "digits" and data["limits"]["max_k"] == 10_000


def test_the_target_comes_from_vaeserve_target(
    digits_server: RunningServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """VAESERVE_TARGET names the server for the CLI and for Client() when none is given; --target or the
    argument wins."""
    monkeypatch.setenv("VAESERVE_TARGET", digits_server.address)
    assert main(["info"]) == 0
    assert f"{digits_server.address}: digits:1" in capsys.readouterr().out
    with Client() as client:
        assert client.config.target == digits_server.address and client.health() == "SERVING"
    monkeypatch.setenv("VAESERVE_TARGET", "127.0.0.1:1")  # nothing listens there
    assert main(["--target", digits_server.address, "health"]) == 0
    assert Client(digits_server.address).config.target == digits_server.address
    monkeypatch.delenv("VAESERVE_TARGET")
    assert Client().config.target == "localhost:50051"


def test_health_exit_status(digits_server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(digits_server, "health") == 0 and capsys.readouterr().out.strip() == "SERVING"
    assert main(["--target", "127.0.0.1:1", "--timeout", "3", "health"]) == 1
    assert "UNAVAILABLE from 127.0.0.1:1" in capsys.readouterr().err


def test_score_writes_csv_and_summary(
    digits_server: RunningServer, digits_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scores.csv"
    assert (
        run(
            digits_server,
            "score",
            str(digits_file),
            "--k",
            "200",
            "--seed",
            "3",
            "--anomaly-scores",
            "nll",
            "--out",
            str(out),
            "--batch-size",
            "16",
        )
        == 0
    )
    summary = capsys.readouterr().out
    assert "inputs" in summary and "40" in summary and "flagged" in summary and "inputs/s" in summary
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and [int(r["index"]) for r in rows] == list(range(40))
    assert {"elbo", "log_px", "log_px_se", "ess", "anomaly_score", "percentile", "p_value", "is_anomaly"} <= set(
        rows[0]
    )
    assert run(digits_server, "score", str(digits_file), "--k", "200", "--seed", "3", "--stream", "--json") == 0
    streamed = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(streamed["mean log p(x)"], np.mean([float(r["log_px"]) for r in rows]), atol=1e-3)


def test_sample_picture(digits_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "grid.png"
    assert run(digits_server, "sample", "-n", "64", "--png", str(png), "--seed", "1") == 0
    with Image.open(png) as picture:
        assert picture.format == "PNG" and picture.size == ((8 * 10 + 2) * 4, (8 * 10 + 2) * 4)
        pixels = np.asarray(picture.convert("L"))
    assert pixels.std() > 20  # digits, not a blank canvas
    assert run(digits_server, "sample", "-n", "5", "--out", str(tmp_path / "s.csv")) == 0
    raw = np.loadtxt(tmp_path / "s.csv", delimiter=",")
    assert raw.shape == (5, 64) and raw.min() >= 0 and raw.max() <= 16  # raw units, like the data


def test_explain_picture(digits_server: RunningServer, digits_file: Path, tmp_path: Path) -> None:
    png = tmp_path / "explain.png"
    assert run(digits_server, "explain", str(digits_file), "--png", str(png), "--rows", "3", "--k", "50") == 0
    with Image.open(png) as picture:
        assert picture.format == "PNG" and picture.size[1] == 3 * (8 + 2) * 6


def test_encode_then_decode(digits_server: RunningServer, digits_file: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "codes"
    assert run(digits_server, "encode", str(digits_file), "--out", str(prefix), "--samples", "2") == 0
    mean = np.load(f"{prefix}_mean.npy")
    assert mean.shape == (40, 8) and np.load(f"{prefix}_samples.npy").shape == (40, 2, 8)
    assert (
        run(
            digits_server,
            "decode",
            f"{prefix}_mean.npy",
            "--out",
            str(tmp_path / "x"),
            "--png",
            str(tmp_path / "d.png"),
        )
        == 0
    )
    probs = np.load(tmp_path / "x_probs.npy")
    assert probs.shape == (40, 1, 8, 8) and (tmp_path / "d.png").is_file()


def test_errors(digits_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(digits_server, "score", str(tmp_path / "missing.npy")) == 2
    assert "missing.npy: no such file" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("1,2\n3\n")
    assert run(digits_server, "score", str(tmp_path / "bad.csv")) == 2
    assert "bad.csv: line 2 has 1 fields" in capsys.readouterr().err
    labelled = np.column_stack([load_digits().target[:5], load_digits().data[:5]])
    header = "label," + ",".join(f"p{i}" for i in range(64))
    np.savetxt(tmp_path / "labelled.csv", labelled, delimiter=",", header=header, comments="")
    for command in ("score", "encode"):
        assert run(digits_server, command, str(tmp_path / "labelled.csv")) == 2
        assert "65 columns, and the model takes 64: if one of them holds labels, name it with --label-column" in (
            capsys.readouterr().err
        )
    assert run(digits_server, "score", str(tmp_path / "labelled.csv"), "--label-column", "label") == 0
    capsys.readouterr()
    np.save(tmp_path / "bright.npy", np.full((2, 64), 200.0))
    assert run(digits_server, "score", str(tmp_path / "bright.npy")) == 1
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "x[0] feature 0 is 200 in raw units" in err
    assert main(["--target", "127.0.0.1:1", "--timeout", "3", "info"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_the_console_script(digits_server: RunningServer, digits_file: Path) -> None:
    script = Path(sys.executable).parent / "vaeserve"
    done = subprocess.run(
        [str(script), "--target", digits_server.address, "score", str(digits_file), "--k", "20"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "digits:1" in done.stdout
