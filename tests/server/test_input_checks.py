"""The input checker on its own: every rule a request meets before any work, and the message it is refused with.

`RequestChecks` holds a served model's limits (batch, K, latent draws, reply size) and hands the inputs to
the engine's `InputChecker` (shape, finiteness, data range). The messages are the ones the server sends:
the boundary maps `InvalidArgument` to INVALID_ARGUMENT and `LimitExceeded` to RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import pytest

from tests.bundles import LinearBernoulli
from vaeserve.api import codec
from vaeserve.api.manifest import Manifest, Preprocessing
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.server.engine import Engine, RuntimeConfig, load_bundle
from vaeserve.server.engine.inputs import InputChecker
from vaeserve.server.errors import InvalidArgument, LimitExceeded
from vaeserve.server.protocols.v1.convert import INPUT_DTYPES, LATENT_DTYPES
from vaeserve.server.serving.calls import DecodeCall, EncodeCall, SampleCall, ScoreCall
from vaeserve.server.serving.checks import Limits, RequestChecks

LIMITS = Limits(max_batch=4, max_k=100, max_samples=1000, max_in_flight=8, max_message_bytes=1 << 20)
IMAGE_SHAPES = "(B, 1, 8, 8) or (B, 8, 8) or (B, 64)"


@pytest.fixture(scope="module")
def gaussian(exact_bundle: Path) -> Manifest:
    """Real-valued data, 10 features, 3 latents, no preprocessing."""
    return load_bundle(exact_bundle).manifest


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """A Bernoulli model of 8x8 one-channel images sent as pixels 0-255 (scaled by 1/255)."""
    bundle = LinearBernoulli.random(dim=64, latent=3, seed=1).write(tmp_path_factory.mktemp("img"), image=(1, 8, 8))
    scaled = Preprocessing(shift=[0.0], scale=[1 / 255])
    return bundle.manifest.model_copy(update={"input_shape": [1, 8, 8], "preprocessing": scaled})


def checks(manifest: Manifest, limits: Limits = LIMITS) -> RequestChecks:
    return RequestChecks(limits, manifest, InputChecker(manifest).prepare)


def refused(error: type[Exception], message: str) -> AbstractContextManager[pytest.ExceptionInfo[Exception]]:
    """The exact message, not a fragment of it."""
    return pytest.raises(error, match=f"^{re.escape(message)}$")


# --- shapes and dtypes -----------------------------------------------------------------------------------


def test_every_accepted_shape_and_dtype_gives_the_same_model_space_float32(image: Manifest) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 64))
    expected = (pixels / 255).astype(np.float32)
    for shape in [(3, 1, 8, 8), (3, 8, 8), (3, 64)]:
        for dtype in INPUT_DTYPES:
            x = checks(image).inputs(pixels.reshape(shape).astype(dtype))
            assert x.dtype == np.float32 and x.shape == (3, 64)
            np.testing.assert_allclose(x, expected, rtol=1e-6, err_msg=f"{shape} {dtype}")


@pytest.mark.parametrize(
    ("shape", "shown"),
    [
        ((3,), "(3,)"),
        ((), "()"),
        ((2, 63), "(2, 63)"),
        ((2, 2, 8, 8), "(2, 2, 8, 8)"),
        ((2, 8, 8, 1), "(2, 8, 8, 1)"),
    ],
)
def test_a_wrong_rank_or_shape_is_refused_naming_the_shapes_the_model_takes(
    image: Manifest, shape: tuple[int, ...], shown: str
) -> None:
    with refused(InvalidArgument, f"x has shape {shown}; this model takes {IMAGE_SHAPES}"):
        checks(image).inputs(np.zeros(shape))


def test_a_table_model_takes_one_shape(gaussian: Manifest) -> None:
    with refused(InvalidArgument, "x has shape (3, 11); this model takes (B, 10)"):
        checks(gaussian).inputs(np.zeros((3, 11)))


def test_a_tensor_of_a_dtype_the_call_does_not_take_is_refused_as_it_is_decoded() -> None:
    def tensor(dtype: int) -> pb.Tensor:
        return pb.Tensor(dtype=dtype, shape=[2, 10], data=bytes(20))  # type: ignore[arg-type]

    accepted = r" is not accepted here \(accepted: "
    with pytest.raises(codec.TensorError, match=r"^x: dtype bool" + accepted):
        codec.from_proto(tensor(pb.DATA_TYPE_BOOL), name="x", dtypes=INPUT_DTYPES)
    with pytest.raises(codec.TensorError, match=r"^z: dtype uint8" + accepted):
        codec.from_proto(tensor(pb.DATA_TYPE_UINT8), name="z", dtypes=LATENT_DTYPES)
    with refused(codec.TensorError, "x: DATA_TYPE_UNSPECIFIED is not a valid tensor dtype"):
        codec.from_proto(tensor(pb.DATA_TYPE_UNSPECIFIED), name="x", dtypes=INPUT_DTYPES)
    with refused(codec.TensorError, "x: unknown dtype 99 is not a valid tensor dtype"):
        codec.from_proto(tensor(99), name="x", dtypes=INPUT_DTYPES)


# --- values ----------------------------------------------------------------------------------------------


def test_an_empty_batch_is_refused(gaussian: Manifest) -> None:
    with refused(InvalidArgument, "x is an empty batch; send at least one input"):
        checks(gaussian).inputs(np.zeros((0, 10)))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({2: np.nan}, "1 NaN or infinite value(s), first in row 2"),
        ({3: np.nan, 1: -np.inf}, "2 NaN or infinite value(s), first in row 1"),
    ],
)
def test_nan_and_infinity_are_refused_with_the_first_row_holding_one(
    gaussian: Manifest, image: Manifest, bad: dict[int, float], message: str
) -> None:
    for manifest in (gaussian, image):
        x = np.full((4, manifest.dim), 0.5)
        for row, value in bad.items():
            x[row, 5] = value
        with refused(InvalidArgument, f"x holds {message}"):
            checks(manifest).inputs(x)


def test_finite_inputs_that_preprocessing_overflows_are_refused_after_preprocessing(gaussian: Manifest) -> None:
    huge = gaussian.model_copy(update={"preprocessing": Preprocessing(shift=[0.0], scale=[1e30])})
    message = "x after preprocessing holds 10 NaN or infinite value(s), first in row 0"
    with pytest.warns(RuntimeWarning, match="overflow"), refused(InvalidArgument, message):
        checks(huge).inputs(np.full((2, 10), 1e10) * np.array([[1.0], [1e-30]]))


def test_a_bernoulli_input_outside_0_1_is_refused_in_raw_units_and_rounding_is_clipped(image: Manifest) -> None:
    x = np.zeros((2, 64))
    x[1, 5] = 300.0
    with refused(
        InvalidArgument,
        "x[1] feature 5 is 300 in raw units, 1.17647 after preprocessing; this Bernoulli model takes values "
        "in [0, 1] after preprocessing (raw range 0 to 255)",
    ):
        checks(image).inputs(x)
    x[1, 5] = 255.0001  # float rounding of a full-scale pixel, not an error
    assert checks(image).inputs(x).max() == 1.0


def test_a_gaussian_input_of_absurd_magnitude_is_refused(gaussian: Manifest) -> None:
    x = np.zeros((3, 10))
    x[1, 4] = -2e6
    with refused(
        InvalidArgument,
        "x[1] has a value of magnitude above 1e+06 after preprocessing; far outside anything this model can score",
    ):
        checks(gaussian).inputs(x)


# --- limits ----------------------------------------------------------------------------------------------


def test_a_batch_above_max_batch_is_refused_before_its_shape_is_read(gaussian: Manifest) -> None:
    assert checks(gaussian).inputs(np.zeros((4, 10))).shape == (4, 10)  # at the limit: served
    for x in (np.zeros((5, 10)), np.zeros((5, 3))):
        with refused(LimitExceeded, "x has 5 inputs; max_batch is 4 (split the request, or use ScoreStream)"):
            checks(gaussian).inputs(x)
    with refused(LimitExceeded, "z has 5 inputs; max_batch is 4 (split the request, or use ScoreStream)"):
        checks(gaussian).decode(DecodeCall(np.zeros((5, 3))))


@pytest.mark.parametrize(
    ("k", "error", "message"),
    [
        (0, InvalidArgument, "k must be at least 1, got 0"),
        (-3, InvalidArgument, "k must be at least 1, got -3"),
        (101, LimitExceeded, "k=101 is above max_k=100"),
        (10**18, LimitExceeded, f"k={10**18} is above max_k=100"),
    ],
)
def test_an_absurd_k_is_refused(gaussian: Manifest, k: int, error: type[Exception], message: str) -> None:
    with refused(error, message):
        checks(gaussian).k(k)


def test_k_within_the_limits_passes(gaussian: Manifest) -> None:
    for k in (1, 100):
        checks(gaussian).k(k)  # raises nothing


def test_adaptive_k_needs_a_positive_target_and_a_max_k_within_the_limits(gaussian: Manifest) -> None:
    c, x = checks(gaussian), np.zeros((2, 10))
    assert c.adaptive(ScoreCall(x), 10) == (None, None)
    assert c.adaptive(ScoreCall(x, target_se=0.1), 10) == (0.1, 100)  # max_k: the server's limit
    assert c.adaptive(ScoreCall(x, target_se=0.1, max_k=40), 10) == (0.1, 40)
    cases = [
        (ScoreCall(x, max_k=50), InvalidArgument, "max_k goes with target_se (adaptive K); for a fixed K set k"),
        (ScoreCall(x, target_se=0.0), InvalidArgument, "target_se must be above 0, got 0.0"),
        (ScoreCall(x, target_se=float("nan")), InvalidArgument, "target_se must be above 0, got nan"),
        (ScoreCall(x, target_se=0.1, max_k=101), LimitExceeded, "max_k=101 is above max_k=100"),
        (
            ScoreCall(x, target_se=0.1, max_k=5),
            InvalidArgument,
            "max_k=5 is below k=10: adaptive K starts at k and doubles up to max_k",
        ),
    ]
    for call, error, message in cases:
        with refused(error, message):
            c.adaptive(call, 10)


def test_encode_bounds_the_latent_draws_and_checks_resampling(gaussian: Manifest) -> None:
    x = np.zeros((4, 10))
    assert checks(gaussian).encode(EncodeCall(x, n_samples=250), proposals=100).shape == (4, 10)  # 1000 draws
    cases = [
        (
            EncodeCall(x, n_samples=251),
            100,
            LimitExceeded,
            "4 inputs x n_samples=251 asks for 1004 latent draws; max_samples is 1000",
        ),
        (EncodeCall(x, resample=True), 100, InvalidArgument, "importance resampling needs n_samples >= 1"),
        (EncodeCall(x, n_samples=1, resample=True), 0, InvalidArgument, "proposals must be at least 1, got 0"),
        (EncodeCall(x, n_samples=1, resample=True), 101, LimitExceeded, "proposals=101 is above max_k=100"),
    ]
    for call, proposals, error, message in cases:
        with refused(error, message):
            checks(gaussian).encode(call, proposals)
    wide = checks(gaussian, Limits(4, 10**6, 1000, 8, 1 << 20))
    with refused(LimitExceeded, "4 inputs x proposals=5000 / 10 asks for 2000 latent draws; max_samples is 1000"):
        wide.encode(EncodeCall(x, n_samples=1, resample=True), 5000)


def test_decode_takes_latents_of_the_model_s_size_as_float32(gaussian: Manifest) -> None:
    z = checks(gaussian).decode(DecodeCall(np.ones((2, 3), np.float64)))
    assert z.dtype == np.float32 and z.shape == (2, 3)
    for shape in [(2, 4), (3,), (1, 2, 3)]:
        with refused(InvalidArgument, f"z has shape {shape}; this model takes (N, 3)"):
            checks(gaussian).decode(DecodeCall(np.zeros(shape)))


def test_decode_refuses_an_empty_or_non_finite_latent_batch(exact_bundle: Path) -> None:
    engine = Engine(load_bundle(exact_bundle), RuntimeConfig(device="cpu"))
    with refused(InvalidArgument, "z is an empty batch; send at least one latent vector"):
        engine.decode(np.zeros((0, 3), np.float32))
    z = np.zeros((3, 3), np.float32)
    z[2, 1] = np.inf
    with refused(InvalidArgument, "z holds 1 NaN or infinite value(s), first in row 2"):
        engine.decode(z)


def test_sample_needs_at_least_one_draw_and_at_most_max_samples(gaussian: Manifest) -> None:
    checks(gaussian).sample(SampleCall(1000))  # at the limit: served
    with refused(InvalidArgument, "n must be at least 1"):
        checks(gaussian).sample(SampleCall(0))
    with refused(LimitExceeded, "n=1001 asks for 1001 latent draws; max_samples is 1000"):
        checks(gaussian).sample(SampleCall(1001))


def test_a_reply_too_large_to_send_is_refused_before_the_work(image: Manifest) -> None:
    c = checks(image, Limits(10**6, 100, 10**7, 8, 1 << 20))
    many = ScoreCall(np.zeros((1, 64)), per_dim=True, reconstruction=True)
    c.score_reply(1000, 1, many)  # under 1 MB
    tail = r"; the limit is 1 MB \(max_message_mb\): ask for fewer inputs at once$"
    with pytest.raises(LimitExceeded, match=r"^scoring 4000 inputs would make a reply of about 4 MB" + tail):
        c.score_reply(4000, 1, many)
    c.score_reply(4000, 1, ScoreCall(np.zeros((1, 64))))  # without the per-feature arrays it fits
    with pytest.raises(LimitExceeded, match=r"^decoding 5000 latents would make a reply of about \d+ MB" + tail):
        c.decode(DecodeCall(np.zeros((5000, 3)), sample=True))
    with pytest.raises(LimitExceeded, match=r"^n=5000 samples would make a reply of about \d+ MB" + tail):
        c.sample(SampleCall(5000, sample_x=True))
    with pytest.raises(LimitExceeded, match=r"^50000 inputs x n_samples=3 would make a reply of about \d+ MB" + tail):
        c.encode(EncodeCall(np.zeros((50_000, 64)), n_samples=3), 10)
