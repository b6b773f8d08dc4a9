"""Cross-fitted ensembles (bundle format 2) on closed-form members: the mixture's numbers, the draws split
among members, cross-conformal p-values, and what an ensemble refuses or leaves out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import grpc
import numpy as np
import pytest
from scipy.special import logsumexp

from tests.bundles import Encoder, LinearGaussian, write_bundle
from tests.serving import RunningServer, server_settings
from tests.v2.test_v2 import infer, outputs_of
from vaeserve.api import codec
from vaeserve.api.bundle import save_ensemble, update_manifest
from vaeserve.api.manifest import MANIFEST_FILE, member_draws, member_seed
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc
from vaeserve.api.v2 import grpc_predict_v2_pb2 as v2
from vaeserve.api.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from vaeserve.client import Client
from vaeserve.server.anomaly import AnomalyScorer, open_scorer
from vaeserve.server.engine import BundleError, Engine, EnsembleEngine, RuntimeConfig, ScoreOptions, load_bundle
from vaeserve.training.crossfit import calibrate_members

CPU = RuntimeConfig(device="cpu")
SHIFT, SCALE = 0.3, 2.0  # member 1 reads the data standardized differently from member 0


def _members(root: Path, encoder: Encoder) -> list[LinearGaussian]:
    models = [LinearGaussian.random(dim=6, latent=2, s2=0.2, seed=s) for s in (1, 2)]
    write_bundle(root / "member-0", models[0], encoder)
    write_bundle(root / "member-1", models[1], encoder, preprocessing={"shift": [SHIFT], "scale": [SCALE]})
    return models


def _ensemble(root: Path, encoder: Encoder | None = None, calibrate: bool = True) -> list[LinearGaussian]:
    models = _members(root, encoder or Encoder())
    save_ensemble(root, name="ens", version="1")
    if calibrate:
        engine = EnsembleEngine(load_bundle(root), CPU)
        rows = [models[0].sample(40, seed=3), models[0].sample(37, seed=4)]  # folds of unequal size
        calibration = calibrate_members(engine, rows, k=20, seed=5, dataset="test", val_rows=rows[::-1])
        update_manifest(root, calibration=calibration.model_dump())
    return models


@pytest.fixture(scope="module")
def exact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[LinearGaussian]]:
    root = tmp_path_factory.mktemp("exact-ensemble")
    return root, _ensemble(root)


@pytest.fixture(scope="module")
def server(exact: tuple[Path, list[LinearGaussian]]) -> RunningServer:
    running = RunningServer(server_settings(exact[0], http_port=0))
    yield running  # type: ignore[misc]
    running.stop()


def test_the_mixture_log_px_in_closed_form(exact: tuple[Path, list[LinearGaussian]]) -> None:
    """Exact posteriors make every importance weight p_f(x): the mixture is log mean_f p_f(x) exactly, with
    member 1's density carried into member 0's space by the change of variables (D log SCALE)."""
    root, (m0, m1) = exact
    engine = EnsembleEngine(load_bundle(root), CPU)
    x = m0.sample(9, seed=11)
    members = np.stack([m0.log_px(x), m1.log_px((x - SHIFT) * SCALE) + 6 * math.log(SCALE)], axis=1)
    result = engine.score(x.astype(np.float32), ScoreOptions(k=7), 3)
    np.testing.assert_allclose(result["log_px"], logsumexp(members, axis=1) - math.log(2), atol=2e-4)
    # each member's ELBO equals its log p_f(x) in expectation (its Monte Carlo estimate is not exact)
    assert (np.abs(result["elbo"] - members.mean(axis=1)) < 5 * result["elbo_se"]).all()
    np.testing.assert_allclose(result["disagreement"], members.std(axis=1, ddof=1), atol=2e-4)
    np.testing.assert_allclose(result["gap"], result["log_px"] - result["elbo"])
    assert result.member_nll is not None and result.member_nll.shape == (9, 2)


def test_draws_are_split_among_members(tmp_path: Path) -> None:
    """K=5 over two members: 3 draws from seed s and 2 from member_seed(s, 1), as each member scores alone;
    K below the member count costs one draw each."""
    _ensemble(tmp_path, Encoder(shrink=0.7, var_scale=2.0), calibrate=False)
    bundle = load_bundle(tmp_path)
    engine = EnsembleEngine(bundle, CPU)
    x = LinearGaussian.random(dim=6, latent=2, s2=0.2, seed=1).sample(4, seed=2).astype(np.float32)
    assert [member_draws(5, 2, f) for f in (0, 1)] == [3, 2] and [member_draws(1, 2, f) for f in (0, 1)] == [1, 1]
    for k in (5, 1):
        got = engine.score(x, ScoreOptions(k=k), 8)
        alone = [
            Engine(member, CPU).score(
                engine.member_input(x, f), ScoreOptions(k=member_draws(k, 2, f)), member_seed(8, f)
            )
            for f, member in enumerate(bundle.members)
        ]
        own = np.stack([a["log_px"] for a in alone], axis=1) + engine.offsets
        np.testing.assert_allclose(got["log_px"], logsumexp(own, axis=1) - math.log(2), rtol=1e-12)
        np.testing.assert_allclose(got.member_nll, -np.stack([a["log_px"] for a in alone], axis=1))
    assert np.isnan(engine.score(x, ScoreOptions(k=3), 8)["log_px_se"]).all()  # member 1 took one draw


def test_cross_conformal_p_values_by_hand(exact: tuple[Path, list[LinearGaussian]]) -> None:
    """p = (1 + sum_f #{i in fold f: s_f(x_i) >= s_f(x)}) / (N + 1), each member's score against its own fold."""
    root, (m0, _) = exact
    bundle = load_bundle(root)
    scorer = open_scorer(EnsembleEngine(bundle, CPU))
    calibration = bundle.manifest.calibration
    assert calibration is not None and calibration.fold_sizes == [40, 37] and calibration.n == 77
    x = scorer.engine.prepare(np.concatenate([m0.sample(20, seed=21), m0.sample(5, seed=22) + 3.0]))
    raw = scorer.raw(x, ["nll", "combined"])
    (judged,) = scorer.judge(raw, ["nll"], 0.05)
    folds = [calibration.member(f).scores["nll"] for f in (0, 1)]
    at_least = [sum(np.sum(np.asarray(folds[f]) >= raw["nll"][i, f]) for f in (0, 1)) for i in range(len(x))]
    np.testing.assert_allclose(judged.p_value, (1 + np.asarray(at_least)) / 78)
    np.testing.assert_allclose(judged.score, raw["nll"].mean(axis=1))
    assert math.isnan(judged.threshold) and judged.n_calibration == 77 and judged.min_alpha == 1 / 78
    assert judged.is_anomaly[20:].all() and judged.is_anomaly[:20].mean() < 0.5  # shifted rows are anomalies
    member = AnomalyScorer(Engine(bundle.members[1], CPU), calibration=calibration.member(1))
    alone = member.raw(scorer.engine.member_input(x, 1), ["nll"])["nll"]
    np.testing.assert_allclose(raw["nll"][:, 1], alone)  # member 1 scores with its own K share and seed
    with pytest.raises(TypeError, match="calibrated member by member"):
        scorer.calibrate(x, k=20, seed=5, dataset="test")


def test_served_by_both_protocols_alike(server: RunningServer, exact: tuple[Path, list[LinearGaussian]]) -> None:
    x = exact[1][0].sample(12, seed=31).astype(np.float32)
    with grpc.insecure_channel(server.address) as channel:
        native = vae_pb2_grpc.VaeServiceStub(channel).Score(pb.ScoreRequest(x=codec.to_proto(x), k=20, seed=5))
        oip = outputs_of(infer(channel, "ens", x, k=20, seed=5))
    assert native.HasField("disagreement")
    np.testing.assert_array_equal(oip["disagreement"], codec.from_proto(native.disagreement))
    np.testing.assert_array_equal(oip["log_px"], codec.from_proto(native.log_px))
    np.testing.assert_array_equal(oip["anomaly_p_value"], codec.from_proto(native.anomaly.p_value))
    assert native.anomaly.n_calibration == 77 and math.isnan(native.anomaly.threshold)
    with Client(server.address) as client:
        info = client.info()
        assert info.manifest.members == ["member-0", "member-1"] and info.manifest.format_version == 2
        scores = client.score(x, k=20, seed=5)
        assert scores.disagreement is not None and "disagreement" in scores.columns()
        with pytest.raises(Exception, match=r"typicality test .* does not apply"):
            client.score(x, typicality=True)
        encoded = client.encode(x)  # member 0's posterior
    mean, _ = Engine(load_bundle(exact[0] / "member-0"), CPU).encode(x)
    np.testing.assert_allclose(encoded.z_mean, mean)


def test_a_single_model_has_no_disagreement(serve, exact_bundle: Path, lg: LinearGaussian) -> None:  # type: ignore[no-untyped-def]
    running = serve(exact_bundle, http_port=0)
    x = lg.sample(3).astype(np.float32)
    with grpc.insecure_channel(running.address) as channel:
        native = vae_pb2_grpc.VaeServiceStub(channel).Score(pb.ScoreRequest(x=codec.to_proto(x), k=4))
        assert not native.HasField("disagreement")
        assert "disagreement" not in outputs_of(infer(channel, "linear-gaussian", x, k=4))
        metadata = v2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
            v2.ModelMetadataRequest(name="linear-gaussian")
        )
        assert "disagreement" not in [o.name for o in metadata.outputs]
    with Client(running.address) as client:
        scores = client.score(x, k=4)
        assert scores.disagreement is None and "disagreement" not in scores.columns()


def test_broken_ensembles_are_refused(tmp_path: Path) -> None:
    _ensemble(tmp_path, calibrate=False)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({**manifest, "members": ["member-0", "1"]}))
    with pytest.raises(BundleError, match=r"members\[1\] must be 'member-1'"):
        load_bundle(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    member = json.loads((tmp_path / "member-1" / MANIFEST_FILE).read_text())
    (tmp_path / "member-1" / MANIFEST_FILE).write_text(json.dumps({**member, "description": "edited"}))
    with pytest.raises(BundleError, match=r"member-1/manifest\.json: sha256 mismatch"):
        load_bundle(tmp_path)
    write_bundle(tmp_path / "member-1", LinearGaussian.random(dim=6, latent=3, s2=0.2, seed=2))
    with pytest.raises(BundleError, match="latent_dim 3 vs 2"):
        load_bundle(save_ensemble(tmp_path, name="ens", version="1"))
