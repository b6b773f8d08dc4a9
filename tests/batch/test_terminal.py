"""What vaeserve-batch prints: its own lines only, Ray's as well with --verbose, and a clear error for a bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.batch.conftest import DIGITS, Inputs
from vaeserve.batch.terminal import without_ray_core_lines

pytestmark = pytest.mark.batch

OURS = ("warning: ", "vaeserve-batch: error: ")  # the only lines of ours that go to stderr
# Ray's Python loggers ("2026-12-06 05:30:22,078\tINFO worker.py:2038 -- ...") and its C++ side
# ("[2026-12-06 05:30:22,930 E 30702 30702] core_worker.cc:2465: ...")
RAY_LOG_LINE = re.compile(r"^\[?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}[^\n]*? \S+\.(?:py|cc):\d+", re.MULTILINE)
CORE_WORKER_LINE = (
    "[2026-12-06 05:11:53,590 E 32054 32054] core_worker.cc:2465: Actor with class name: "
    "'MapWorker(MapBatches(ScoreActor))' and ID: 'fddd227441befc9e316f47fc01000000' has constructor arguments in "
    "the object store and max_restarts > 0. If the arguments in the object store go out of scope or are lost, the "
    "actor restart will fail. See https://github.com/ray-project/ray/issues/53727 for more details.\n"
)


def vaeserve_batch(*args: object) -> subprocess.CompletedProcess[str]:
    """The console script, as a user runs it."""
    script = Path(sys.executable).with_name("vaeserve-batch")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, env=env, timeout=240)


def score_args(inputs: Inputs, out: Path, address: str) -> list[object]:
    return ["score", *inputs.files, "--bundle", DIGITS, "--out", out, "--address", address, "--label-column", "label"]


def test_a_run_prints_its_summary_and_nothing_of_rays(ray_cluster: str, inputs: Inputs, tmp_path: Path) -> None:
    """On the two-node cluster: the summary on stdout, our warning on stderr, no line of Ray's (its core
    worker's error-level line on starting the actor pool included)."""
    out = tmp_path / "scores.parquet"
    done = vaeserve_batch(*score_args(inputs, out, ray_cluster), "--k", 4)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("warning: no anomaly scores: they use the calibration's K=")
    assert all(line.startswith(OURS) for line in done.stderr.splitlines()), done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("scored 120 rows from 5 files with digits:1 in ") and lines[-1] == f"wrote {out}"
    assert not RAY_LOG_LINE.search(done.stdout + done.stderr)
    assert out.exists()


def test_verbose_lets_rays_lines_through(ray_cluster: str, inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    done = vaeserve_batch(*score_args(inputs, out, ray_cluster), "--k", 4, "--anomaly-scores", "none", "--verbose")
    assert done.returncode == 0, done.stderr
    ray_lines = RAY_LOG_LINE.findall(done.stderr)
    assert len(ray_lines) >= 3, done.stderr
    assert "Connecting to existing Ray cluster" in done.stderr  # ray.init's start-up line
    assert "Execution plan of Dataset" in done.stderr  # Ray Data's
    assert done.stdout.splitlines()[-1] == f"wrote {out}"


def test_verbose_is_in_the_help() -> None:
    done = vaeserve_batch("score", "--help")
    assert done.returncode == 0
    assert "-v, --verbose" in done.stdout and "let Ray's own output through" in done.stdout


def test_a_bad_file_on_a_local_instance_prints_our_error_only(inputs: Inputs, tmp_path: Path) -> None:
    """No --address: a local Ray instance of the command's own. A worker finds the bad line; the user reads
    which file and line, and nothing of Ray's."""
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([",".join(["1"] * 64), ",".join(["1"] * 63 + ["x"]), ",".join(["1"] * 64)]) + "\n")
    out = tmp_path / "out.parquet"
    args = ["score", inputs.files[0], bad, "--bundle", DIGITS, "--out", out, "--k", 4, "--anomaly-scores", "none"]
    done = vaeserve_batch(*args, "--num-cpus", 1)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"vaeserve-batch: error: {bad}: line 2: could not convert string to float: 'x'\n"
    assert done.stdout == ""
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_a_missing_bundle_is_an_error_before_ray_starts(tmp_path: Path) -> None:
    done = vaeserve_batch("score", tmp_path / "x.npy", "--bundle", tmp_path / "nope", "--out", tmp_path / "o.parquet")
    assert done.returncode == 2
    assert done.stderr.startswith(f"vaeserve-batch: error: {tmp_path / 'nope'}: ")
    assert len(done.stderr.splitlines()) == 1


def test_rays_core_lines_are_held_back_and_everything_else_written_out(capfd: pytest.CaptureFixture[str]) -> None:
    """Written to file descriptor 2 as Ray's C++ side writes them, around lines of ours and of others."""
    with without_ray_core_lines():
        os.write(2, b"before ")
        os.write(2, CORE_WORKER_LINE.encode())
        os.write(2, b"warning: ours\n")  # sys.stderr's lines reach fd 2 too (but for pytest's own sys.stderr)
        os.write(2, b"[2026-12-06 05:11:53,591 W 1 2] raylet_client.cc:10: a warning\n")
        os.write(2, b"[2026-12-06 05:11:53,592 C 1 2] logging.cc:20: a fatal error stays\n")
        os.write(2, b"(pid=12) a worker's line stays\n")
        assert capfd.readouterr().err == ""  # held until the end
    assert capfd.readouterr().err == (
        "before warning: ours\n"
        "[2026-12-06 05:11:53,592 C 1 2] logging.cc:20: a fatal error stays\n"
        "(pid=12) a worker's line stays\n"
    )


def test_nothing_is_held_when_verbose(capfd: pytest.CaptureFixture[str]) -> None:
    with without_ray_core_lines(enabled=False):
        os.write(2, CORE_WORKER_LINE.encode())
        assert capfd.readouterr().err == CORE_WORKER_LINE


def test_what_was_held_is_written_out_when_the_run_fails(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError), without_ray_core_lines():
        os.write(2, CORE_WORKER_LINE.encode() + b"kept\n")
        raise RuntimeError("a task failed")
    assert capfd.readouterr().err == "kept\n"
