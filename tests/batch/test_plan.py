"""vaeserve-batch without a cluster: the plan of the inputs, the seed rule, batch sizes and the server's defaults."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.batch.conftest import DIGITS, Inputs
from tests.serving import RunningServer
from vaeserve.batch.cli import main
from vaeserve.batch.inputs import DataFileError, plan_inputs, read_rows
from vaeserve.batch.scoring import RowScorer, ScoreSpec, batch_rows, row_seeds
from vaeserve.client import Client
from vaeserve.server.serving.policy import AnomalyPlan

pytestmark = pytest.mark.batch


@pytest.fixture(scope="module")
def scorer() -> RowScorer:
    return RowScorer(DIGITS)


def test_rows_are_numbered_across_files_in_order(inputs: Inputs, scorer: RowScorer) -> None:
    plan = plan_inputs(inputs.files, scorer.manifest, label_column="label")
    assert [p.path.name for p in plan] == ["a.npy", "b.csv", "part-0.parquet", "part-1.parquet", "part-2-idx3-ubyte.gz"]
    assert [p.kind for p in plan] == ["npy", "csv", "parquet", "parquet", "idx"]
    assert [(p.rows, p.offset) for p in plan] == [(40, 0), (30, 40), (20, 70), (15, 90), (15, 105)]
    assert [p.label_column for p in plan] == [None, "label", "label", "label", None]
    read = np.concatenate([read_rows(p, scorer.manifest) for p in plan])
    np.testing.assert_array_equal(read, inputs.rows.reshape(120, 64))  # every format reads the same values


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "wide.npy",
            np.zeros((3, 65)),
            "wide.npy: rows of shape (65,); model digits:1 takes (N, 1, 8, 8) or (N, 8, 8) or (N, 64)",
        ),
        ("junk.bin", b"not data", "junk.bin: not a data file (expected .npy, .csv, .parquet or MNIST-format IDX"),
        ("empty.csv", b"", "empty.csv: the file is empty"),
        ("text.npy", np.array(["a", "b"]), "text.npy: dtype <U1 is not numeric"),
    ],
)
def test_a_bad_file_is_named_before_any_work(
    name: str, content: bytes | np.ndarray, message: str, scorer: RowScorer, tmp_path: Path
) -> None:
    path = tmp_path / name
    np.save(path, content) if isinstance(content, np.ndarray) else path.write_bytes(content)
    with pytest.raises(DataFileError) as caught:
        plan_inputs([path], scorer.manifest)
    assert str(caught.value).startswith(str(tmp_path / message))


def test_the_command_line_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Errors found before Ray starts: the message and exit status 2, no traceback."""
    out = tmp_path / "out.parquet"
    assert main(["score", str(tmp_path / "missing.npy"), "--bundle", str(DIGITS), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"vaeserve-batch: error: {tmp_path / 'missing.npy'}: no such file or directory\n"
    (tmp_path / "empty").mkdir()
    assert main(["score", str(tmp_path / "empty"), "--bundle", str(DIGITS), "--out", str(out)]) == 2
    assert "a directory without data files" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", np.zeros((2, 64)))
    assert (
        main(["score", str(tmp_path / "x.npy"), "--bundle", str(DIGITS), "--out", str(out), "--anomaly-scores", "nope"])
        == 2
    )
    assert "unknown anomaly score 'nope'" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "x.npy"), "--bundle", str(tmp_path), "--out", str(out)]) == 2
    assert "manifest.json" in capsys.readouterr().err
    assert (
        main(["score", str(tmp_path / "x.npy"), "--bundle", str(DIGITS), "--out", str(tmp_path / "no" / "o.parquet")])
        == 2
    )
    assert (
        capsys.readouterr().err
        == f"vaeserve-batch: error: {tmp_path / 'no' / 'o.parquet'}: its directory does not exist\n"
    )
    assert not out.exists()


def test_row_seed_is_the_seed_plus_the_global_index_mod_2_64() -> None:
    np.testing.assert_array_equal(row_seeds(7, np.arange(3)), np.array([7, 8, 9], np.uint64))
    np.testing.assert_array_equal(row_seeds(2**64 - 2, np.arange(4)), np.array([2**64 - 2, 2**64 - 1, 0, 1], np.uint64))


def test_batches_fit_the_draw_budget_and_feed_every_actor(scorer: RowScorer) -> None:
    elbo = ScoreSpec(k=1, seed=0, alpha=0.01, plan=AnomalyPlan())
    iwae = ScoreSpec(k=1000, seed=0, alpha=0.01, plan=AnomalyPlan())
    with_anomaly = ScoreSpec(k=1000, seed=0, alpha=0.01, plan=AnomalyPlan(("nll",)))
    assert batch_rows(elbo, scorer.manifest, 10_000_000, 2) == 65_536
    assert batch_rows(elbo, scorer.manifest, 100_000, 2) == 12_500  # four batches per actor, not 65,536 and a rest
    assert batch_rows(iwae, scorer.manifest, 100_000, 2) == 65
    assert batch_rows(with_anomaly, scorer.manifest, 100_000, 2) == 32  # plus the calibration's K=1000
    assert batch_rows(iwae, scorer.manifest, 3, 2) == 1


def test_defaults_are_the_servers(scorer: RowScorer, serve: Callable[..., RunningServer]) -> None:
    server = serve(DIGITS)
    with Client(server.address) as client:
        info = client.info()
    spec = scorer.spec()
    assert spec.k == info.defaults["k"] == info.manifest.calibration.k  # type: ignore[union-attr]
    assert spec.seed == info.defaults["seed"] == 0
    assert spec.alpha == pytest.approx(info.defaults["alpha"])
    assert spec.anomaly_scores == info.default_anomaly_scores
    assert scorer.spec(anomaly_scores=()).anomaly_scores == ()


def test_the_anomaly_rule_is_the_servers(scorer: RowScorer, serve: Callable[..., RunningServer]) -> None:
    """K=1 gets no anomaly pass unless scores are named (the server's rule), with the server's warning."""
    server = serve(DIGITS)
    spec = scorer.spec(k=1)
    assert spec.anomaly_scores == () and spec.draws_per_row(scorer.manifest) == 1
    with Client(server.address) as client:
        reply = client.score(np.zeros((2, 64)), k=1)
    assert reply.anomalies == {} and list(reply.warnings) == list(spec.warnings)
    assert scorer.spec(k=1, anomaly_scores=("nll",)).anomaly_scores == ("nll",)
