"""vaeserve-batch on a real two-node Ray cluster: one output row per input row, results that do not depend
on how the rows were split, and equal to the server's Score of each row alone (bad files as messages: test_terminal)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.batch.conftest import DIGITS, Inputs
from tests.serving import RunningServer
from vaeserve.api.v2 import grpc_predict_v2_pb2 as v2
from vaeserve.api.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from vaeserve.batch.cli import main
from vaeserve.batch.scoring import RowScorer, row_seeds
from vaeserve.client import Client

pytestmark = pytest.mark.batch

K = 32  # above 20, so pareto_k is computed too
SEED = 11
KEYS = ["source", "index", "global_index", "seed"]
CANCER = DIGITS.parent / "breast-cancer"  # a cross-fitted ensemble of 5 members


def score(address: str, out: Path, *inputs: Path, extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Scores at K=32 with the model's default anomaly scores, named (at K=32 the server's rule gives none
    unless named)."""
    names = ",".join(RowScorer(DIGITS, warm_up=False).spec().anomaly_scores)
    argv = ["score", *map(str, inputs), "--bundle", str(DIGITS), "--out", str(out), "--address", address]
    argv += ["--anomaly-scores", names]
    assert main([*argv, "--k", str(K), "--seed", str(SEED), "--label-column", "label", "--no-progress", *extra]) == 0
    table = pq.read_table(out)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


@pytest.fixture(scope="module")
def scored(ray_cluster: str, inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The inputs' five files of four formats scored on the cluster with the model's default anomaly scores."""
    return score(ray_cluster, tmp_path_factory.mktemp("out") / "scores.parquet", *inputs.files)


def test_one_row_per_input_row_with_its_source_and_index(scored: dict[str, np.ndarray], inputs: Inputs) -> None:
    assert list(scored["source"]) == inputs.sources
    np.testing.assert_array_equal(scored["index"], inputs.index)
    np.testing.assert_array_equal(scored["global_index"], np.arange(120))
    np.testing.assert_array_equal(scored["seed"], SEED + np.arange(120, dtype=np.uint64))
    # the numbers are the engine's on those rows with those seeds
    scorer = RowScorer(DIGITS)
    spec = scorer.spec(k=K, seed=SEED, anomaly_scores=scorer.spec().anomaly_scores)
    expected = scorer.score(inputs.rows, row_seeds(SEED, np.arange(120)), spec)
    assert [c for c in scored if c not in KEYS] == list(expected) == scorer.schema(spec).names[4:]
    assert "anomaly_score" in expected and "nll_p_value" in expected and "complexity_is_anomaly" in expected
    for name, values in expected.items():
        np.testing.assert_allclose(scored[name], values, rtol=1e-12, err_msg=name)


def test_results_do_not_depend_on_how_the_rows_are_split(
    scored: dict[str, np.ndarray], inputs: Inputs, ray_cluster: str, tmp_path: Path
) -> None:
    """The same rows as one file, and as three shards in batches of one to three rows on one actor."""
    np.save(tmp_path / "whole.npy", inputs.rows)
    (tmp_path / "split").mkdir()
    for i, part in enumerate(np.array_split(inputs.rows, 3)):
        np.save(tmp_path / "split" / f"{i}.npy", part)
    whole = score(ray_cluster, tmp_path / "whole.parquet", tmp_path / "whole.npy")
    split = score(
        ray_cluster,
        tmp_path / "split.parquet",
        tmp_path / "split",
        extra=("--batch-draws", str(3 * (K + 1000)), "--actors", "1"),
    )
    np.testing.assert_array_equal(split["index"], np.tile(np.arange(40), 3))
    for name in scored:
        if name not in KEYS:
            np.testing.assert_allclose(whole[name], scored[name], rtol=1e-6, err_msg=name)
            np.testing.assert_allclose(split[name], scored[name], rtol=1e-6, err_msg=name)


def test_each_row_equals_the_servers_score_of_that_row_alone(
    scored: dict[str, np.ndarray], inputs: Inputs, serve: Callable[..., RunningServer]
) -> None:
    server = serve(DIGITS)
    names = list(
        RowScorer(DIGITS).spec().anomaly_scores
    )  # the default set, named: a row's seed is not the calibration's
    assert len(names) > 1  # the first fills anomaly_score, the others <name>_<field>
    with Client(server.address) as client:
        for row in (0, 45, 77, 100, 119):  # one from each file
            reply = client.score(inputs.rows[row : row + 1], k=K, seed=SEED + row, anomaly_scores=names)
            columns = reply.columns()
            assert set(columns) == set(scored) - set(KEYS)
            for name, value in columns.items():
                np.testing.assert_allclose(scored[name][row], value[0], rtol=1e-5, err_msg=f"row {row}: {name}")


def test_an_ensemble_scores_as_the_server_and_v2_do(
    ray_cluster: str, inputs: Inputs, serve: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """The bundled breast-cancer ensemble: the same columns (disagreement too) and numbers from vaeserve-batch,
    the server's Score and the Open Inference Protocol, for a row scored at the model's defaults."""
    rows = _cancer_rows(tmp_path)
    argv = ["score", str(tmp_path / "cancer.npy"), "--bundle", str(CANCER), "--out", str(tmp_path / "c.parquet")]
    assert main([*argv, "--address", ray_cluster, "--seed", "0", "--no-progress"]) == 0
    table = pq.read_table(tmp_path / "c.parquet")
    batch = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    assert "disagreement" in batch and "anomaly_score" in batch  # K and seed 0: the defaults come, as the server's
    server = serve(CANCER, http_port=0)
    with Client(server.address) as client:
        names = list(client.info().default_anomaly_scores)
        for row in (0, 7):  # row i's seed is 0 + i: named, as a row's seed is not the calibration's
            columns = client.score(rows[row : row + 1], seed=row, anomaly_scores=names).columns()
            assert set(columns) == set(batch) - set(KEYS)
            for name, value in columns.items():
                np.testing.assert_allclose(batch[name][row], value[0], rtol=1e-6, err_msg=f"row {row}: {name}")
    request = v2.ModelInferRequest(model_name="breast-cancer")
    request.inputs.add(name="x", datatype="FP64", shape=rows[:1].shape)
    request.raw_input_contents.append(rows[:1].astype("<f8").tobytes())
    for key, value in (("seed", 0), ("anomaly_scores", ",".join(names))):
        setattr(request.parameters[key], "int64_param" if key == "seed" else "string_param", value)
    with grpc.insecure_channel(server.address) as channel:
        reply = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    oip = {o.name: raw for o, raw in zip(reply.outputs, reply.raw_output_contents)}
    for output, column in (("log_px", "log_px"), ("disagreement", "disagreement"), ("anomaly_p_value", "p_value")):
        np.testing.assert_allclose(np.frombuffer(oip[output], "<f8")[0], batch[column][0], rtol=1e-6, err_msg=output)


def _cancer_rows(tmp_path: Path) -> np.ndarray:
    """20 rows in the model's raw units, like its data (standard normal after its preprocessing)."""
    pre = RowScorer(CANCER, warm_up=False).manifest.preprocessing
    rows = pre.invert(np.random.default_rng(0).standard_normal((20, 30)))
    np.save(tmp_path / "cancer.npy", rows)
    return rows
