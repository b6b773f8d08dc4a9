"""The model repository on real servers: several models, versions, swaps under load, failures, unloading."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.bundles import LinearGaussian
from tests.serving import RunningServer
from vaeserve.api import codec
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc

Stub = vae_pb2_grpc.VaeServiceStub
READY, FAILED = pb.MODEL_STATE_READY, pb.MODEL_STATE_FAILED


def add_version(repo: Path, name: str, version: int, bundle: Path) -> Path:
    """Publishes a bundle as a version the way vaeserve-train does: written aside, renamed into place."""
    staging = repo / name / f".{version}.staging"
    shutil.copytree(bundle, staging)
    target = repo / name / str(version)
    staging.rename(target)
    return target


def statuses(stub: Stub, name: str = "") -> dict[tuple[str, str], pb.ModelStatus]:
    return {(m.name, m.version): m for m in stub.ListModels(pb.ListModelsRequest(name=name)).models}


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def score(stub: Stub, x: np.ndarray, name: str = "lg", version: str = "", k: int = 200) -> pb.ScoreResponse:
    spec = pb.ModelSpec(name=name, version=version)
    return stub.Score(pb.ScoreRequest(model=spec, x=codec.to_proto(x), k=k, seed=5, skip_anomaly=True))


@pytest.fixture
def repo(tmp_path: Path, worse_bundle: Path) -> Path:
    add_version(tmp_path / "models", "lg", 1, worse_bundle)
    return tmp_path / "models"


def test_three_models_at_once_by_name(
    serve: Callable[..., RunningServer], tmp_path: Path, worse_bundle: Path, exact_bundle: Path, digits_bundle: Path
) -> None:
    repo = tmp_path / "models"
    for name, bundle in (("worse", worse_bundle), ("exact", exact_bundle), ("digits", digits_bundle)):
        add_version(repo, name, 1, bundle)
    server = serve(None, model_repository=repo)
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        assert {k: s.state for k, s in statuses(stub).items()} == {
            ("digits", "1"): READY,
            ("exact", "1"): READY,
            ("worse", "1"): READY,
        }
        for name in ("worse", "exact", "digits"):
            info = stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelSpec(name=name)))
            assert (info.header.model_name, info.header.model_version) == (name, "1")
        assert stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelSpec(name="digits"))).latent_dim == 8
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModelInfo(pb.GetModelInfoRequest())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "serves several models (digits, exact, worse); name one" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelSpec(name="nope")))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "'nope' is not served here" in err.value.details()
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "vaeserve.api.v1.VaeService", "digits", "exact", "worse"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    routed = serve(None, model_repository=repo, default_model="exact")
    with grpc.insecure_channel(routed.address) as channel:
        assert Stub(channel).GetModelInfo(pb.GetModelInfoRequest()).header.model_name == "exact"
        assert Stub(channel).ListModels(pb.ListModelsRequest()).default_model == "exact"


def test_a_version_swap_under_load_loses_nothing_and_names_its_version(
    serve: Callable[..., RunningServer], repo: Path, exact_bundle: Path, lg: LinearGaussian
) -> None:
    server = serve(None, model_repository=repo)
    x = lg.sample(3, seed=8)
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        expected = {"1": codec.from_proto(score(stub, x).log_px)}
        replies: list[tuple[str, str, np.ndarray]] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def load(kind: str) -> None:
            while not stop.is_set():
                try:
                    if kind == "score":
                        reply = score(stub, x)
                        replies.append((kind, reply.header.model_version, codec.from_proto(reply.log_px)))
                    else:
                        enc = stub.Encode(pb.EncodeRequest(model=pb.ModelSpec(name="lg"), x=codec.to_proto(x)))
                        replies.append((kind, enc.header.model_version, codec.from_proto(enc.z_mean)))
                except BaseException as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=load, args=(kind,)) for kind in ("score", "score", "encode", "encode")]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        add_version(repo, "lg", 2, exact_bundle)
        loaded = stub.LoadModel(pb.LoadModelRequest(name="lg"))
        assert [(m.version, m.state) for m in loaded.models if m.state == READY] == [("2", READY)]
        time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join(30)
        assert not errors, errors[:3]
        expected["2"] = codec.from_proto(score(stub, x).log_px)
        wait_for(lambda: list(statuses(stub)) == [("lg", "2")])
    versions = {version for _, version, _ in replies}
    assert versions == {"1", "2"}, "the load did not span the swap"
    np.testing.assert_allclose(expected["2"], lg.log_px(x), atol=1e-3)  # version 2 is the exact posterior
    assert not np.allclose(expected["1"], expected["2"], atol=1e-3)
    for kind, version, values in replies:
        if kind == "score":  # the numbers are those of the version the reply names
            np.testing.assert_allclose(values, expected[version], rtol=1e-6)


def test_a_broken_bundle_leaves_the_serving_version_in_place(
    serve: Callable[..., RunningServer], repo: Path, exact_bundle: Path, lg: LinearGaussian
) -> None:
    server = serve(None, model_repository=repo)
    broken = add_version(repo, "lg", 2, exact_bundle)
    (broken / "encoder.onnx").write_bytes((broken / "encoder.onnx").read_bytes() + b"\0")
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        reply = stub.LoadModel(pb.LoadModelRequest(name="lg"))
        by_version = {m.version: m for m in reply.models}
        assert by_version["2"].state == FAILED and "sha256 mismatch" in by_version["2"].reason
        assert by_version["1"].state == READY
        assert score(stub, lg.sample(2)).header.model_version == "1"
        with pytest.raises(grpc.RpcError) as err:
            score(stub, lg.sample(2), version="2")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "lg:2 is FAILED: " in err.value.details()
        shutil.rmtree(broken)
        add_version(repo, "lg", 2, exact_bundle)  # mended: the next load takes it
        stub.LoadModel(pb.LoadModelRequest(name="lg"))
        assert score(stub, lg.sample(2)).header.model_version == "2"


def test_unloading_completes_the_requests_in_flight(
    serve: Callable[..., RunningServer], repo: Path, lg: LinearGaussian
) -> None:
    server = serve(None, model_repository=repo)
    x = lg.sample(200, seed=3)
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        outcome: dict[str, object] = {}

        def heavy() -> None:
            try:
                outcome["reply"] = score(stub, x, k=10_000)
            except grpc.RpcError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=heavy)
        worker.start()
        wait_for(lambda: statuses(stub)[("lg", "1")].in_flight == 1)
        stub.UnloadModel(pb.UnloadModelRequest(name="lg"))
        worker.join(60)
        assert "error" not in outcome, outcome
        reply = outcome["reply"]
        assert isinstance(reply, pb.ScoreResponse) and len(codec.from_proto(reply.log_px)) == 200
        assert statuses(stub) == {}
        with pytest.raises(grpc.RpcError) as err:
            score(stub, x[:1])
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="lg")).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        stub.LoadModel(pb.LoadModelRequest(name="lg"))  # back by hand
        assert score(stub, x[:1]).header.model_version == "1"


def test_polling_picks_up_new_versions_and_ignores_half_written_ones(
    serve: Callable[..., RunningServer], repo: Path, exact_bundle: Path, lg: LinearGaussian
) -> None:
    server = serve(None, model_repository=repo, repository_poll_s=0.1)
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        shutil.copytree(exact_bundle, repo / "lg" / ".3.staging-x")  # hidden: being written
        partial = repo / "lg" / "2"
        partial.mkdir()
        shutil.copy(exact_bundle / "manifest.json", partial)  # no graphs yet
        wait_for(lambda: ("lg", "2") in statuses(stub) and statuses(stub)[("lg", "2")].state == FAILED)
        assert ("lg", "3") not in statuses(stub) and score(stub, lg.sample(1)).header.model_version == "1"
        for name in ("encoder.onnx", "decoder.onnx"):
            shutil.copy(exact_bundle / name, partial)
        wait_for(lambda: list(statuses(stub)) == [("lg", "2")] and statuses(stub)[("lg", "2")].state == READY)
        shutil.rmtree(partial)
        shutil.rmtree(repo / "lg" / "1")
        wait_for(lambda: statuses(stub) == {})


def test_version_policy_and_model_settings_from_model_toml(
    serve: Callable[..., RunningServer], repo: Path, exact_bundle: Path, lg: LinearGaussian
) -> None:
    add_version(repo, "lg", 2, exact_bundle)
    (repo / "lg" / "model.toml").write_text("default_k = 7\nmax_batch = 5\n\n[version_policy]\nall = true\n")
    server = serve(None, model_repository=repo)
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        assert {v for (_, v), s in statuses(stub).items() if s.state == READY} == {"1", "2"}
        info = stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelSpec(name="lg")))
        assert (info.header.model_version, info.defaults.k, info.limits.max_batch) == ("2", 7, 5)
        assert score(stub, lg.sample(2), version="1").header.model_version == "1"
        assert stub.Score(pb.ScoreRequest(x=codec.to_proto(lg.sample(2)))).k == 7
        with pytest.raises(grpc.RpcError) as err:
            score(stub, lg.sample(6))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_batch is 5" in err.value.details()
        (repo / "lg" / "model.toml").write_text("[version_policy]\nspecific = [1]\nbogus = 1\n")
        reply = stub.LoadModel(pb.LoadModelRequest(name="lg"))  # a bad file changes nothing
        assert [(m.version, m.state) for m in reply.models] == [("2", READY), ("1", READY)]
        assert all("model.toml: invalid model settings: version_policy.bogus" in m.reason for m in reply.models)
        (repo / "lg" / "model.toml").write_text("[version_policy]\nspecific = [1]\n")
        reply = stub.LoadModel(pb.LoadModelRequest(name="lg"))
        wait_for(lambda: [(v, s.state) for (_, v), s in statuses(stub).items()] == [("1", READY)])
        with pytest.raises(grpc.RpcError) as err:
            stub.LoadModel(pb.LoadModelRequest(name="absent"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no model 'absent'" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.UnloadModel(pb.UnloadModelRequest(name=""))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_request_id_comes_back_in_metadata_errors_included(worse_server: RunningServer) -> None:
    with grpc.insecure_channel(worse_server.address) as channel:
        stub = Stub(channel)
        _, call = stub.GetModelInfo.with_call(pb.GetModelInfoRequest(), metadata=[("x-request-id", "ok-1")])
        assert ("x-request-id", "ok-1") in tuple(call.trailing_metadata())
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(pb.ScoreRequest(), metadata=[("x-request-id", "bad-2")])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ("x-request-id", "bad-2") in tuple(err.value.trailing_metadata())
        _, call = stub.GetModelInfo.with_call(pb.GetModelInfoRequest())
        made = dict(call.trailing_metadata())["x-request-id"]
        assert made and made != "ok-1"


def test_a_server_with_no_loadable_model_refuses_to_start(
    serve: Callable[..., RunningServer], tmp_path: Path, worse_bundle: Path
) -> None:
    from vaeserve.server.engine import BundleError

    bad = add_version(tmp_path / "models", "lg", 1, worse_bundle)
    (bad / "decoder.onnx").unlink()
    with pytest.raises(BundleError, match=r"no model could be loaded .*lg:1: .*decoder.onnx: missing"):
        serve(None, model_repository=tmp_path / "models")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="holds no model versions"):
        serve(None, model_repository=tmp_path / "empty")


def test_a_folder_of_bundles_is_a_repository(serve: Callable[..., RunningServer], tmp_path: Path) -> None:
    """This project's own models/ (a bundle directly under each <name>/) serves every model as version 1; a
    <name>/ holding a bundle and numbered versions too is refused, and says why."""
    models = Path(__file__).resolve().parents[2] / "models"
    server = serve(None, model_repository=models)
    with grpc.insecure_channel(server.address) as channel:
        ready = {key for key, s in statuses(Stub(channel)).items() if s.state == READY}
    assert ready == {("digits", "1"), ("mnist5k", "1"), ("breast-cancer", "1")}
    shutil.copytree(models / "digits", tmp_path / "repo" / "digits")
    add_version(tmp_path / "repo", "digits", 2, models / "digits")
    from vaeserve.server.engine import BundleError

    with pytest.raises(BundleError, match=r"holds a bundle \(manifest\.json\) and numbered versions \(2\): keep one"):
        serve(None, model_repository=tmp_path / "repo")
