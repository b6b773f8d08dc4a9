"""A request checked against a served model's limits before any work is done.

The limits bound what one request may cost: inputs per request, K, latent draws and the size of
the reply (one that could not be sent is refused before the work, not after). Inputs then go
through the engine's checker (shape, finiteness, the model's data range). Over a limit is
`LimitExceeded` (RESOURCE_EXHAUSTED), a request that cannot be right is `InvalidArgument`; each
message says what was asked, what the limit is and how to ask instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vaeserve.api.manifest import Manifest
from vaeserve.api.scores import ANOMALY_FIELDS, SCORE_COLUMNS
from vaeserve.server.errors import InvalidArgument, LimitExceeded
from vaeserve.server.serving.calls import DecodeCall, EncodeCall, SampleCall, ScoreCall
from vaeserve.server.settings import Settings

__all__ = ["Limits", "RequestChecks"]


@dataclass(frozen=True)
class Limits:
    max_batch: int
    max_k: int
    max_samples: int
    max_in_flight: int
    max_message_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            settings.max_batch,
            settings.max_k,
            settings.max_samples,
            settings.max_in_flight,
            settings.max_message_mb << 20,
        )


class RequestChecks:
    """One model's checks; `prepare` is its engine's: raw inputs -> checked model-space float32 [B, D]."""

    def __init__(self, limits: Limits, manifest: Manifest, prepare: Callable[[np.ndarray], np.ndarray]) -> None:
        self.limits = limits
        self._manifest = manifest
        self._prepare = prepare

    # --- one limit each -------------------------------------------------------------------------

    def batch(self, n: int, what: str = "x") -> None:
        if n > self.limits.max_batch:
            raise LimitExceeded(
                f"{what} has {n} inputs; max_batch is {self.limits.max_batch} (split the request, or use ScoreStream)"
            )

    def k(self, k: int, what: str = "k") -> None:
        if k < 1:
            raise InvalidArgument(f"{what} must be at least 1, got {k}")
        if k > self.limits.max_k:
            raise LimitExceeded(f"{what}={k} is above max_k={self.limits.max_k}")

    def samples(self, n: int, what: str) -> None:
        if n > self.limits.max_samples:
            raise LimitExceeded(f"{what} asks for {n} latent draws; max_samples is {self.limits.max_samples}")

    def reply(self, nbytes: int, what: str) -> None:
        """Refuses, before any work, a request whose reply could not be sent."""
        if nbytes > self.limits.max_message_bytes:
            raise LimitExceeded(
                f"{what} would make a reply of about {nbytes / 2**20:.0f} MB; the limit is "
                f"{self.limits.max_message_bytes / 2**20:.0f} MB (max_message_mb): ask for fewer inputs at once"
            )

    def inputs(self, raw: np.ndarray) -> np.ndarray:
        """Raw inputs as sent -> checked model-space float32 [B, D]."""
        if raw.ndim >= 1:
            self.batch(raw.shape[0])
        return self._prepare(raw)

    # --- each call's checks, in the order a request meets them -------------------------------------

    def encode(self, call: EncodeCall, proposals: int) -> np.ndarray:
        """The call's checked inputs; `proposals` is the call's, or the model's default K."""
        x = self.inputs(call.x)
        n = call.n_samples
        self.samples(n * len(x), f"{len(x)} inputs x n_samples={n}")
        if call.resample:
            if n < 1:
                raise InvalidArgument("importance resampling needs n_samples >= 1")
            self.k(proposals, "proposals")
            self.samples(proposals * len(x) // 10, f"{len(x)} inputs x proposals={proposals} / 10")
        self.reply(4 * len(x) * self._manifest.latent_dim * (2 + n), f"{len(x)} inputs x n_samples={n}")
        return x

    def decode(self, call: DecodeCall) -> np.ndarray:
        """The call's latents as float32 [N, L]."""
        z, latent = call.z, self._manifest.latent_dim
        if z.ndim != 2 or z.shape[1] != latent:
            raise InvalidArgument(f"z has shape {tuple(z.shape)}; this model takes (N, {latent})")
        self.batch(len(z), "z")
        self.reply(self._decoded_bytes(len(z), call.sample), f"decoding {len(z)} latents")
        return np.asarray(z, dtype=np.float32)

    def sample(self, call: SampleCall) -> None:
        if call.n < 1:
            raise InvalidArgument("n must be at least 1")
        self.samples(call.n, f"n={call.n}")
        z_bytes = 4 * call.n * self._manifest.latent_dim
        self.reply(self._decoded_bytes(call.n, call.sample_x) + z_bytes, f"n={call.n} samples")

    def adaptive(self, call: ScoreCall, k: int) -> tuple[float | None, int | None]:
        """(target_se, max_k) of a Score call at K=k; both None for a fixed K."""
        if call.target_se is None:
            if call.max_k is not None:
                raise InvalidArgument("max_k goes with target_se (adaptive K); for a fixed K set k")
            return None, None
        if not call.target_se > 0.0:
            raise InvalidArgument(f"target_se must be above 0, got {call.target_se}")
        max_k = self.limits.max_k if call.max_k is None else call.max_k
        self.k(max_k, "max_k")
        if max_k < k:
            raise InvalidArgument(f"max_k={max_k} is below k={k}: adaptive K starts at k and doubles up to max_k")
        return call.target_se, max_k

    def score_reply(self, inputs: int, anomaly_scores: int, call: ScoreCall) -> None:
        """The reply of a Score call on `inputs` inputs with that many anomaly scores: its columns and arrays."""
        per_input = 8 * (len(SCORE_COLUMNS) + 2 + len(ANOMALY_FIELDS) * anomaly_scores)
        per_input += self._manifest.dim * (8 * call.per_dim + 4 * call.reconstruction)
        self.reply(inputs * per_input, f"scoring {inputs} inputs")

    def _decoded_bytes(self, n: int, sample: bool) -> int:
        """Bytes of decoded parameters: two float32 tensors (and a sample) per row, and some framing."""
        return 4 * n * self._manifest.dim * (2 + int(sample)) + 4096
