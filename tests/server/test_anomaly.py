"""Anomaly scores and flags against closed forms and independent computations, on real engines and servers.

The closed-form bundle is a linear-Gaussian VAE (tests/bundles.py): with the exact posterior as its
encoder, -log p(x) is known, so every score built on it can be checked; its normal data can be drawn
fresh at will, so the false-positive rate of the flags can be measured.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.bundles import Encoder, LinearBernoulli, LinearGaussian, add_background, add_calibration, write_bundle
from tests.serving import RunningServer
from vaeserve.api import codec
from vaeserve.api.manifest import Calibration, Standardization
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc
from vaeserve.client import Client, InvalidArgumentError
from vaeserve.server.anomaly import AnomalyScorer, png_bits, to_uint8, typicality
from vaeserve.server.anomaly.passes import SharedPasses
from vaeserve.server.anomaly.scorer import SCORE_FNS
from vaeserve.server.engine import Engine, RuntimeConfig, load_bundle
from vaeserve.server.engine.bundle import BundleError
from vaeserve.server.engine.results import ScoreOptions

CPU = RuntimeConfig(device="cpu")


@pytest.fixture(scope="module")
def calibrated(lg: LinearGaussian, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exact linear-Gaussian bundle with a background model and 999 calibration inputs."""
    path = tmp_path_factory.mktemp("calibrated")
    write_bundle(path, lg, Encoder())
    add_background(path, LinearGaussian.random(dim=10, latent=3, s2=0.5, seed=7))
    add_calibration(path, lg.sample(999, seed=11), k=100, seed=0, standardize_on=lg.sample(300, seed=12))
    return path


@pytest.fixture(scope="module")
def scorer(calibrated: Path) -> AnomalyScorer:
    bundle = load_bundle(calibrated)
    assert bundle.background is not None
    return AnomalyScorer(Engine(bundle, CPU), Engine(bundle.background, CPU))


def test_p_values_are_conformal_over_random_splits(scorer: AnomalyScorer, lg: LinearGaussian) -> None:
    """For exchangeable scores P(p <= alpha) = floor(alpha (n + 1)) / (n + 1): measured over many random
    splits of real engine scores into n = 99 calibration inputs and fresh ones."""
    pool = scorer.engine.nll(scorer.engine.prepare(lg.sample(4000, seed=21)), 100, 0)[0]
    rng = np.random.default_rng(0)
    flagged = {0.01: [], 0.05: [], 0.2: []}  # type: dict[float, list[float]]
    for _ in range(400):
        order = rng.permutation(len(pool))
        calibration = Calibration(k=100, seed=0, dataset="pool", scores={"nll": sorted(pool[order[:99]].tolist())})
        p = calibration.p_value(pool[order[99:599]])
        for alpha in flagged:
            flagged[alpha].append(float(np.mean(p <= alpha)))
    for alpha, rates in flagged.items():
        # Splits share scores, so the rate's spread is the Beta(alpha n, (1 - alpha) n) of one split over 400.
        spread = np.sqrt(alpha * (1 - alpha) / 100) / np.sqrt(400)
        assert abs(np.mean(rates) - alpha) < 5 * spread, (alpha, np.mean(rates))


def test_served_flags_keep_their_false_positive_rate(
    serve: Callable[..., RunningServer], calibrated: Path, lg: LinearGaussian
) -> None:
    """Fresh normal data: the share flagged is alpha within its error (the calibration's 999 inputs set a
    Beta spread sqrt(alpha (1 - alpha) / n), the 5,000 fresh inputs a binomial one); shifted data is caught."""
    server = serve(calibrated)
    fresh = lg.sample(5000, seed=99)
    with Client(server.address, batch_size=2500) as client:
        for alpha in (0.01, 0.05):
            scores = client.score(fresh, alpha=alpha)
            assert scores.is_anomaly is not None and scores.p_value is not None
            rate = float(scores.is_anomaly.mean())
            error = np.sqrt(alpha * (1 - alpha) / 999) + np.sqrt(alpha * (1 - alpha) / 5000)
            assert abs(rate - alpha) < 4 * error, (alpha, rate)
            np.testing.assert_array_equal(scores.is_anomaly, scores.p_value <= alpha)
            combined = client.score(fresh, alpha=alpha, anomaly_scores=["combined"]).anomalies["combined"]
            assert abs(float(combined.is_anomaly.mean()) - alpha) < 4 * error, (alpha, "combined")
        shifted = client.score(fresh[:200] + 2.0, alpha=0.01)
        assert shifted.is_anomaly is not None and shifted.is_anomaly.mean() > 0.9


def test_each_score_against_an_independent_computation(scorer: AnomalyScorer, lg: LinearGaussian) -> None:
    x = lg.sample(16, seed=5)
    k, seed = 100, 0
    raw = scorer.raw(scorer.engine.prepare(x), ["nll", "reconstruction", "likelihood_ratio"])
    # nll: the exact posterior makes every importance weight p(x): -log p(x) in closed form.
    np.testing.assert_allclose(raw["nll"], -lg.log_px(x), atol=1e-4)
    # reconstruction: E_q ||x - (W z + b)||^2 over the same draws as numpy makes them (seed's stream).
    eps = np.random.default_rng(seed).standard_normal((k, 3), dtype=np.float32).astype(np.float64)
    mean, var = Encoder().params(lg, x)
    z = mean[:, None, :] + np.sqrt(var)[:, None, :] * eps[None]
    err = ((x[:, None, :] - z @ lg.W.T - lg.b) ** 2).sum(axis=2).mean(axis=1)
    np.testing.assert_allclose(raw["reconstruction"], err, rtol=1e-4)
    # ... and close to its closed form ||x - b - W m||^2 + sum_l v_l ||W_l||^2 (Monte Carlo error).
    closed = ((x - lg.b - mean @ lg.W.T) ** 2).sum(axis=1) + (var * (lg.W**2).sum(axis=0)).sum(axis=1)
    np.testing.assert_allclose(raw["reconstruction"], closed, rtol=0.15)
    # likelihood_ratio: log p_bg(x) - log p(x), both closed forms.
    background = LinearGaussian.random(dim=10, latent=3, s2=0.5, seed=7)
    np.testing.assert_allclose(raw["likelihood_ratio"], background.log_px(x) - lg.log_px(x), atol=1e-3)


def test_combined_is_the_largest_standardized_component(scorer: AnomalyScorer, lg: LinearGaussian) -> None:
    """Medians and IQRs from the standardization rows (not the calibration's), then the largest z per input."""
    calibration = scorer.calibration
    assert calibration is not None and calibration.standardization is not None
    held = scorer.raw(scorer.engine.prepare(lg.sample(300, seed=12)), ["nll", "reconstruction"])
    for name, (center, scale) in calibration.standardization.components.items():
        q1, median, q3 = np.percentile(held[name], [25, 50, 75])
        assert (center, scale) == pytest.approx((median, q3 - q1))
    assert list(calibration.standardization.components) == ["nll", "reconstruction"]  # not an image model
    x = np.concatenate([lg.sample(20, seed=6), lg.sample(5, seed=7) + 3.0])
    raw = scorer.raw(scorer.engine.prepare(x), ["nll", "reconstruction", "combined"])
    z = [(raw[n] - c) / s for n, (c, s) in calibration.standardization.components.items()]
    np.testing.assert_allclose(raw["combined"], np.maximum(*z), rtol=1e-12)
    # The calibration's combined scores are the calibration rows' own, sorted.
    calib_rows = scorer.raw(scorer.engine.prepare(lg.sample(999, seed=11)), ["combined"])["combined"]
    np.testing.assert_allclose(calibration.sorted_scores("combined"), np.sort(calib_rows), rtol=1e-9)


def test_combined_needs_its_standardization() -> None:
    scores = {"nll": [1.0, 2.0], "combined": [0.0, 1.0]}
    with pytest.raises(ValueError, match="needs its standardization"):
        Calibration(k=10, seed=0, dataset="d", scores=scores)
    with pytest.raises(ValueError, match=r"components \['reconstruction'\] are not calibrated"):
        Calibration(
            k=10,
            seed=0,
            dataset="d",
            scores=scores,
            standardization={"components": {"reconstruction": (1.0, 2.0)}, "dataset": "v"},  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="scale finite and > 0"):
        Standardization(components={"nll": (1.0, 0.0)}, dataset="v")


def test_complexity_is_nll_in_bits_minus_a_lossless_png_length(tmp_path: Path) -> None:
    model = LinearBernoulli.random(dim=64, latent=3, seed=1)
    bundle = model.write(tmp_path / "img", image=(1, 8, 8))
    rng = np.random.default_rng(2)
    x = (rng.random((6, 64)) < 0.3).astype(np.float64) * rng.random((6, 64))
    x[0] = 0.0  # blank
    x[1] = np.tile(np.linspace(0, 1, 8), 8)  # smooth
    engine = Engine(bundle, CPU)
    prepared = engine.prepare(x)
    batch = SharedPasses(prepared, engine, None, 50, 0)  # the calibration's K and seed would go here
    images = to_uint8(prepared, engine.manifest)
    bits = png_bits(images)
    np.testing.assert_allclose(SCORE_FNS["complexity"].compute(batch), batch.nll() / np.log(2) - bits)
    assert bits[0] < bits[1] < bits[2:].min()  # blank < smooth < noisy, as a compressor sees them
    # The stream is a lossless code of the image: inflate and undo PNG's filters to get it back.
    for image in images:
        _, height, width = image.shape
        stream = np.frombuffer(zlib.decompress(_png_stream(image)), np.uint8).reshape(height, width + 1)
        np.testing.assert_array_equal(_unfilter(stream), image[0])
    # And it is about as short as Pillow's own PNG encoder makes the same picture (without its headers).
    from io import BytesIO

    from PIL import Image

    for image, own in zip(images, bits):
        buffer = BytesIO()
        Image.fromarray(image[0]).save(buffer, format="PNG", optimize=True)
        assert own / 8 <= len(buffer.getvalue()), "our stream carries no headers, so it is never longer"
        assert own / 8 >= len(buffer.getvalue()) - 120, "and not much shorter than Pillow's (~70 bytes of headers)"


def _png_stream(image: np.ndarray) -> bytes:
    """png_bits' compressed stream for one image (its length / 8 is the score's term)."""
    from vaeserve.server.anomaly.complexity import _filtered

    rows = image.transpose(1, 2, 0).reshape(1, image.shape[1], -1).astype(np.int16)
    residuals = _filtered(rows, image.shape[0])
    best = np.abs(residuals.astype(np.int8).astype(np.int16)).sum(axis=3).argmin(axis=1)
    chosen = np.take_along_axis(residuals, best[:, None, :, None], axis=1)[:, 0]
    lines = np.concatenate([best[..., None].astype(np.uint8), chosen.astype(np.uint8)], axis=2)[0]
    stream = zlib.compress(lines.tobytes(), 9)
    assert 8 * len(stream) == png_bits(image[None])[0]
    return stream


def _unfilter(stream: np.ndarray) -> np.ndarray:
    """PNG decoding of filtered rows (one byte per pixel), written from the PNG specification."""
    height, width = stream.shape[0], stream.shape[1] - 1
    out = np.zeros((height, width), np.int64)
    for r in range(height):
        kind, line = stream[r, 0], stream[r, 1:].astype(np.int64)
        for c in range(width):
            a = out[r, c - 1] if c else 0
            b = out[r - 1, c] if r else 0
            d = out[r - 1, c - 1] if r and c else 0
            p = a + b - d
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - d)
            paeth = a if pa <= pb and pa <= pc else b if pb <= pc else d
            out[r, c] = (line[c] + [0, a, b, (a + b) // 2, paeth][kind]) % 256
    return out.astype(np.uint8)


def test_typicality_of_batches(scorer: AnomalyScorer, lg: LinearGaussian) -> None:
    """Normal batches are rarely atypical; a batch of inputs likelier than normal ones (all at the mean,
    each unremarkable alone) is, as is a batch of shifted inputs."""
    calibration = scorer.calibration
    assert calibration is not None
    nll_of = lambda x: scorer.raw(scorer.engine.prepare(x), ["nll"])["nll"]  # noqa: E731
    pool = nll_of(lg.sample(4000, seed=31))
    results = [typicality(batch, calibration.sorted_scores("nll"), 0.05) for batch in pool.reshape(100, 40)]
    assert np.mean([r.is_atypical for r in results]) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 100)
    # Inputs near the mean: each is likelier than typical normal data (no single one is flagged) ...
    calm = lg.b + 0.3 * (lg.sample(40, seed=41) - lg.b)
    judged = scorer.judge({"nll": nll_of(calm)}, ["nll"], 0.05)[0]
    assert not judged.is_anomaly.any()
    # ... but the batch as a whole is far from typical.
    result = scorer.typicality(nll_of(calm), 0.05)
    assert result.is_atypical and result.mean_score < result.expected and result.p_value < 0.01
    assert scorer.typicality(nll_of(lg.sample(40, seed=51) + 1.0), 0.05).is_atypical


def test_pareto_k_flags_heavy_tailed_importance_weights(lg: LinearGaussian, tmp_path: Path) -> None:
    """q narrower than p(z|x) by a variance ratio r gives weights with a Pareto tail of shape k = 1 - r:
    r = 0.2 is k = 0.8, unreliable; a wider q gives bounded weights (k < 0). Each input has its own
    seed (with one seed, this model's weights are the same for every input)."""
    x = lg.sample(40, seed=61)
    seeds = np.arange(40, dtype=np.uint64)
    narrow = Engine(write_bundle(tmp_path / "narrow", lg, Encoder(var_scale=0.2)), CPU)
    wide = Engine(write_bundle(tmp_path / "wide", lg, Encoder(var_scale=2.0)), CPU)
    heavy = narrow.score(narrow.prepare(x), ScoreOptions(k=5000), seeds)
    light = wide.score(wide.prepare(x), ScoreOptions(k=5000), seeds)
    assert abs(np.median(heavy["pareto_k"]) - 0.8) < 0.1 and heavy["unreliable"].mean() > 0.7
    np.testing.assert_array_equal(heavy["unreliable"], heavy["pareto_k"] > 0.7)
    assert np.all(light["pareto_k"] < 0) and not light["unreliable"].any()
    few = wide.score(wide.prepare(x), ScoreOptions(k=20), seeds)
    assert np.isnan(few["pareto_k"]).all() and not few["unreliable"].any()  # too few draws for a tail fit


def test_adaptive_k_stops_each_input_at_its_target(
    serve: Callable[..., RunningServer], worse_bundle: Path, lg: LinearGaussian
) -> None:
    x = lg.sample(12, seed=71)
    server = serve(worse_bundle)
    with Client(server.address) as client:
        scores = client.score(x, k=16, target_se=0.02, max_k=4096, seed=3)
        assert scores.k_used is not None and scores.k_used.dtype == np.int64
        assert set(scores.k_used.tolist()) <= {16 * 2**i for i in range(9)}
        assert np.all((scores.log_px_se <= 0.02) | (scores.k_used == 4096))
        assert len(set(scores.k_used.tolist())) > 1  # inputs stop at their own K
        for k in set(scores.k_used.tolist()):  # each input's numbers are those of a plain request at its K
            rows = scores.k_used == k
            plain = client.score(x[rows], k=k, seed=3)
            np.testing.assert_allclose(scores.log_px[rows], plain.log_px, rtol=1e-9)
        with pytest.raises(InvalidArgumentError, match="max_k goes with target_se"):
            client.score(x, max_k=100)
        with pytest.raises(InvalidArgumentError, match="max_k=8 is below k=16"):
            client.score(x, k=16, target_se=0.1, max_k=8)


def test_named_scores_and_errors_over_grpc(
    serve: Callable[..., RunningServer], calibrated: Path, lg: LinearGaussian
) -> None:
    server = serve(calibrated)
    x = lg.sample(5, seed=81)
    with grpc.insecure_channel(server.address) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest())
        status = {a.name: (a.available, a.reason, a.n_calibration) for a in info.anomaly_scores}
        assert status["nll"] == (True, "", 999) and status["likelihood_ratio"] == (True, "", 999)
        assert status["complexity"][0] is False and "not an image model" in status["complexity"][1]
        assert list(info.defaults.anomaly_scores) == ["nll", "reconstruction", "combined"]
        assert info.defaults.alpha == 0.01
        reply = stub.Score(pb.ScoreRequest(x=codec.to_proto(x), anomaly_scores=["reconstruction", "nll"], alpha=0.1))
        assert [a.name for a in reply.anomalies] == ["reconstruction", "nll"] and reply.anomaly.name == "reconstruction"
        assert reply.anomalies[1].alpha == 0.1 and reply.anomalies[1].n_calibration == 999
        np.testing.assert_allclose(codec.from_proto(reply.anomalies[1].score), -codec.from_proto(reply.log_px))
        for names, message in (
            (["nope"], "unknown anomaly score 'nope'; this server knows nll, reconstruction"),
            (["complexity"], "anomaly score 'complexity' is not served by this model: not an image model"),
        ):
            with pytest.raises(grpc.RpcError) as info_error:
                stub.Score(pb.ScoreRequest(x=codec.to_proto(x), anomaly_scores=names))
            assert info_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info_error.value.details()
        with pytest.raises(grpc.RpcError) as info_error:
            stub.Score(pb.ScoreRequest(x=codec.to_proto(x), alpha=0.0))
        assert "alpha must lie in (0, 1], got 0.0" in info_error.value.details()
        typical = stub.Score(pb.ScoreRequest(x=codec.to_proto(lg.sample(50, seed=82)), typicality=True))
        assert typical.typicality.batch_size == 50 and 0 < typical.typicality.p_value <= 1


def test_a_small_calibration_says_so(
    serve: Callable[..., RunningServer], lg: LinearGaussian, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "small"
    write_bundle(path, lg, Encoder())
    add_calibration(path, lg.sample(20, seed=91), k=50)
    server = serve(path)
    with Client(server.address) as client:
        info = client.info()
        assert (
            "the anomaly calibration has 20 inputs" in info.warnings[0]
            and "smallest attainable alpha is 0.04762" in info.warnings[0]
        )
        # both remedies: the alpha it can honour, and more normal rows
        assert "set alpha (--alpha) to 0.048 or more" in info.warnings[0]
        assert "vaeserve-train calibrate BUNDLE DATA --add" in info.warnings[0]
        scores = client.score(lg.sample(30, seed=92) + 5.0)  # far from normal, yet nothing can be flagged at 0.01
        first = scores.anomalies["nll"]
        assert first.min_alpha == pytest.approx(1 / 21) and first.threshold == np.inf
        assert scores.is_anomaly is not None and not scores.is_anomaly.any() and "20 inputs" in scores.warnings[0]
        assert "--alpha" in scores.warnings[0] and "--add" in scores.warnings[0]
        assert client.score(lg.sample(30, seed=92) + 5.0, alpha=0.048).is_anomaly.all()  # type: ignore[union-attr]
    assert any("the anomaly calibration has 20 inputs" in r.getMessage() for r in caplog.records)


def test_a_broken_background_is_refused(calibrated: Path, tmp_path: Path, lg: LinearGaussian) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(calibrated, copy)
    manifest = copy / "background" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"linear-gaussian"', '"changed"'))
    with pytest.raises(BundleError, match=r"background/manifest\.json: sha256 mismatch"):
        load_bundle(copy)
    other = tmp_path / "other"
    write_bundle(other, lg, Encoder())
    with pytest.raises(BundleError, match="must take the same inputs"):
        add_background(other, LinearGaussian.random(dim=6, latent=2, seed=3))


@pytest.mark.parametrize("model", ["digits", "mnist5k"])
def test_the_default_score_flags_blank_constant_and_noise_images(
    serve: Callable[..., RunningServer], model: str
) -> None:
    """A likelihood rates a blank 28x28 image likelier than any digit, the complexity score lets noise pass;
    the bundled image models' default score (combined) flags all of them at the default alpha."""
    bundle = Path(__file__).resolve().parents[2] / "models" / model
    server = serve(bundle)
    with Client(server.address) as client:
        info = client.info()
        top = 16.0 if model == "digits" else 255.0
        dim = int(np.prod(info.input_shape))
        rng = np.random.default_rng(0)
        odd = np.concatenate(
            [
                np.zeros((3, dim)),
                np.full((3, dim), top),
                np.full((3, dim), top / 2),
                np.rint(rng.random((3, dim)) * top),
            ]
        )
        scores = client.score(odd)
    assert next(iter(scores.anomalies)) == "combined"
    assert scores.is_anomaly is not None and scores.is_anomaly.all(), scores.anomalies["combined"].p_value
