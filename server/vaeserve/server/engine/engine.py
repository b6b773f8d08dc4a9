"""The scoring engine: every number vaeserve serves is computed here, once.

Inputs are numpy arrays; the gRPC layer and the training package both call this module,
so served scores, evaluation figures and calibration can never disagree. Methods are
synchronous and thread-safe; long ones call `check()` between chunks so a caller can stop
them (deadline, cancellation). Drawing samples from the model is `sampling`'s; adaptive K is
`adaptive`'s.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from vaeserve.api.manifest import DECODER_INPUT, ENCODER_INPUT, ENCODER_OUTPUTS, Manifest
from vaeserve.server.engine.adaptive import score_adaptive
from vaeserve.server.engine.bundle import Bundle, BundleError
from vaeserve.server.engine.estimators import (
    ElboSums,
    IwaeEstimates,
    LogMeanExp,
    gaussian_entropy,
    kl_to_standard_normal,
    log_standard_normal_const,
)
from vaeserve.server.engine.graphs import Variant, build_score_graph
from vaeserve.server.engine.inputs import InputChecker, require_finite
from vaeserve.server.engine.log_weights import Chunk, chunk_terms
from vaeserve.server.engine.noise import NoiseCache, NoiseSource
from vaeserve.server.engine.psis import KHAT_UNRELIABLE, tail_size
from vaeserve.server.engine.results import ScoreOptions, ScoreResult
from vaeserve.server.engine.runtime import RuntimeConfig, SizedRunner, choose_providers
from vaeserve.server.engine.sampling import draw_x, importance_resample, posterior_draws
from vaeserve.server.errors import InvalidArgument

__all__ = ["Check", "Engine", "no_check"]

Check = Callable[[], None]
# Built and warmed up at load; other combinations (per_dim with sq_err) are built on first use.
_VARIANTS = [
    Variant("posterior"),
    Variant("posterior", per_dim=True),
    Variant("posterior", sq_err=True),
    Variant("prior"),
]
SMALL_RUN = 64  # inputs x draws up to which a run is single-threaded (cheaper than waking a thread pool)


def no_check() -> None:
    """A `check` that never stops the work."""
    return None


@dataclass
class _Estimation:
    iwae: IwaeEstimates
    elbo: ElboSums
    z_mean: np.ndarray
    z_logvar: np.ndarray
    sq_err: np.ndarray | None  # mean over the draws of ||x - E[x|z_k]||^2


class Engine:
    def __init__(
        self,
        bundle: Bundle,
        config: RuntimeConfig | None = None,
        *,
        chunk_samples: int = 2048,
        noise_cache: NoiseCache | None = None,
    ) -> None:
        config = config or RuntimeConfig()
        self.bundle = bundle
        self.manifest: Manifest = bundle.manifest
        providers = choose_providers(config)
        self._encoder = SizedRunner(bundle.encoder, config, providers, SMALL_RUN)
        self._decoder = SizedRunner(bundle.decoder, config, providers, SMALL_RUN)
        self._config, self._providers = config, providers
        self._score = {v: self._runner(v) for v in _VARIANTS}
        self._score_lock = threading.Lock()
        self.provider = self._encoder.provider
        self.chunk_samples = chunk_samples
        self.noise = NoiseSource(self.manifest.latent_dim, noise_cache)
        self._inputs = InputChecker(self.manifest)
        gaussian = self.manifest.likelihood == "gaussian"
        self._log_lik_const = log_standard_normal_const(self.manifest.dim) if gaussian else 0.0
        self._per_dim_const = log_standard_normal_const(1) if gaussian else 0.0

    # --- inputs ---------------------------------------------------------------------------

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        """Accepted shapes of one input: the manifest's, without a leading channel of 1, and flat."""
        return self._inputs.shapes

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        """Raw client inputs [B, *input_shape] or [B, D] -> checked model-space float32 [B, D]."""
        return self._inputs.prepare(raw)

    # --- encode, decode, sample --------------------------------------------------------

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shaped = x.reshape(-1, *self.manifest.input_shape)
        mean, logvar = self._encoder.run(list(ENCODER_OUTPUTS), {ENCODER_INPUT: shaped}, len(shaped))
        return mean, logvar

    def posterior_samples(
        self,
        x: np.ndarray,
        n: int,
        seed: int,
        *,
        resample: bool = False,
        proposals: int = 1000,
        check: Check = no_check,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(mean, logvar, n draws per input [B, n, L], ESS or None).

        Draws come from q(z|x), or are importance-resampled from `proposals` draws of q, when the
        proposals' ESS per input comes too.
        """
        mean, logvar = self.encode(x)
        if not resample:
            return mean, logvar, posterior_draws(mean, logvar, self.noise.draws(seed, n)), None
        eps = self.noise.draws(seed, proposals)
        log_w = self._proposal_log_weights(x, proposals, seed, check)
        samples, ess = importance_resample(mean, logvar, eps, log_w, n, seed)
        return mean, logvar, samples, ess

    def decode(self, z: np.ndarray) -> dict[str, np.ndarray]:
        if z.ndim != 2 or z.shape[1] != self.manifest.latent_dim:
            raise InvalidArgument(f"z has shape {tuple(z.shape)}; this model takes (N, {self.manifest.latent_dim})")
        if z.shape[0] == 0:
            raise InvalidArgument("z is an empty batch; send at least one latent vector")
        require_finite(z, "z")
        names = list(self.manifest.decoder_outputs)
        outputs = dict(
            zip(names, self._decoder.run(names, {DECODER_INPUT: np.ascontiguousarray(z, dtype=np.float32)}, len(z)))
        )
        if self.manifest.likelihood == "bernoulli":
            outputs["probs"] = _sigmoid(outputs["logits"])
        return outputs

    def expected_x(self, params: dict[str, np.ndarray]) -> np.ndarray:
        """E[x|z] (approximately, for the logistic: its location clipped to [0, 1], where its open end bins
        let it run past)."""
        mean = params[self.manifest.mean_output]
        return np.clip(mean, 0.0, 1.0) if self.manifest.likelihood == "logistic" else mean

    def sample_x(self, params: dict[str, np.ndarray], seed: int) -> np.ndarray:
        """x ~ p(x|z) for each row; row i uses row i of the seed's noise."""
        return draw_x(self.manifest, params, seed)

    def sample_prior(self, n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        z = self.noise.draws(seed, n)
        return z, self.decode(z)

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """The decoder's mean of p(x|z) at the posterior mean, [B, *input_shape]."""
        return self.expected_x(self.decode(self.encode(x)[0]))

    # --- scoring --------------------------------------------------------------------------

    def score(
        self, x: np.ndarray, options: ScoreOptions, seed: int | np.ndarray, check: Check = no_check
    ) -> ScoreResult:
        """Scores model-space inputs x [B, D]. `seed` is one seed for all inputs, or one per input."""
        seeds = np.broadcast_to(np.asarray(seed, dtype=np.uint64), (len(x),))
        if options.k < 1:
            raise InvalidArgument(f"k must be at least 1, got {options.k}")
        if options.target_se is None:
            return self._score_fixed(x, options, seeds, check)
        return score_adaptive(self._score_fixed, x, options, seeds, check)

    def _score_fixed(self, x: np.ndarray, options: ScoreOptions, seeds: np.ndarray, check: Check) -> ScoreResult:
        k = options.k
        main = self._estimate(x, k, seeds, Variant("posterior", options.per_dim, options.sq_err), check)
        elbo_sums, iwae, mean, logvar = main.elbo, main.iwae, main.z_mean, main.z_logvar
        kl = kl_to_standard_normal(mean, logvar)
        entropy = gaussian_entropy(logvar)
        recon_term = elbo_sums.mean()
        elbo = recon_term - kl
        elbo_se = elbo_sums.se()
        result = ScoreResult(
            {
                "elbo": elbo,
                "elbo_se": elbo_se,
                "reconstruction_term": recon_term,
                "kl": kl,
                "expected_log_joint": recon_term + elbo_sums.mean_log_pz(),
                "entropy": entropy,
                "log_px": iwae.log_px,
                "log_px_se": iwae.se,
                "ess": iwae.ess,
                "pareto_k": iwae.pareto_k,
                "unreliable": iwae.pareto_k > KHAT_UNRELIABLE,
                "bits_per_dim": -iwae.log_px / (self.manifest.dim * math.log(2.0)),
                "gap": iwae.log_px - elbo,
                "gap_se": np.sqrt(elbo_se**2 + iwae.se**2),
            },
            sq_err=main.sq_err,
        )
        if options.per_dim and elbo_sums.per_dim is not None:
            per_dim = elbo_sums.per_dim / elbo_sums.n[:, None] + self._per_dim_const
            result.per_dim = per_dim.reshape(len(x), *self.manifest.input_shape)
        if options.prior_estimate:
            prior = self._estimate(x, k, seeds, Variant("prior"), check).iwae
            result.columns.update(prior_log_px=prior.log_px, prior_log_px_se=prior.se, prior_ess=prior.ess)
        if options.reconstruction:
            result.reconstruction = self.reconstruct(x)
        return result

    def nll(
        self, x: np.ndarray, k: int, seed: int, *, sq_err: bool = False, check: Check = no_check
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """-log p(x) (IWAE with K draws of one seed) and, when asked, E_q ||x - E[x|z]||^2: the anomaly scores' pass."""
        seeds = np.full(len(x), seed, dtype=np.uint64)
        est = self._estimate(x, k, seeds, Variant("posterior", sq_err=sq_err), check, pareto=False)
        return -est.iwae.log_px, est.sq_err

    def _plan(self, k: int) -> tuple[int, int]:
        """(inputs per run, draws per run) with their product near chunk_samples."""
        draws = min(k, self.chunk_samples)
        return max(1, self.chunk_samples // draws), draws

    def _noise_blocks(self, seeds: np.ndarray, k: int, draws: int) -> Iterator[np.ndarray]:
        """Noise per chunk: [1, C, L] when all inputs share a seed, else [b, C, L] in input order."""
        unique, inverse = np.unique(seeds, return_inverse=True)
        streams = [self.noise.chunks(int(s), k, draws) for s in unique]
        for pieces in zip(*streams):
            block = np.stack(pieces)
            yield block if len(unique) == 1 else block[inverse]

    def _estimate(
        self, x: np.ndarray, k: int, seeds: np.ndarray, variant: Variant, check: Check, *, pareto: bool = True
    ) -> _Estimation:
        batch = len(x)
        rows_per_run, draws = self._plan(k)
        iwae = LogMeanExp(batch, tail=tail_size(k) if pareto and variant.proposal == "posterior" else 0)
        elbo = ElboSums(batch, self.manifest.dim if variant.per_dim else None)
        mean = np.zeros((batch, self.manifest.latent_dim), np.float32)
        logvar = np.zeros_like(mean)
        sq_err = np.zeros(batch) if variant.sq_err else None
        for start in range(0, batch, rows_per_run):
            rows = slice(start, min(start + rows_per_run, batch))
            for eps in self._noise_blocks(seeds[rows], k, draws):
                check()
                chunk = self._run_chunk(variant, x[rows], eps, start)
                if chunk.z_mean is not None and chunk.z_logvar is not None and chunk.log_pz is not None:
                    mean[rows], logvar[rows] = chunk.z_mean, chunk.z_logvar
                    elbo.add(rows, chunk.log_lik, chunk.log_pz, chunk.per_dim)
                if sq_err is not None and chunk.sq_err is not None:
                    sq_err[rows] += chunk.sq_err.sum(axis=1, dtype=np.float64)
                iwae.add(rows, chunk.log_w)
        return _Estimation(iwae.result(), elbo, mean, logvar, None if sq_err is None else sq_err / k)

    def _run_chunk(self, variant: Variant, x: np.ndarray, eps: np.ndarray, first_row: int) -> Chunk:
        """One session run: log p(x|z_k), log p(z_k) and log w_k for draws eps [E, C, L] of inputs x."""
        rows = len(x) * eps.shape[1]
        out = dict(zip(variant.outputs, self._scorer(variant).run(variant.outputs, {"x": x, "eps": eps}, rows)))
        return chunk_terms(variant, out, eps, self._log_lik_const, self.manifest.latent_dim, first_row)

    def _runner(self, variant: Variant) -> SizedRunner:
        return SizedRunner(build_score_graph(self.bundle, variant), self._config, self._providers, SMALL_RUN)

    def _scorer(self, variant: Variant) -> SizedRunner:
        runner = self._score.get(variant)
        if runner is None:
            with self._score_lock:
                runner = self._score.get(variant) or self._score.setdefault(variant, self._runner(variant))
        return runner

    def _proposal_log_weights(self, x: np.ndarray, proposals: int, seed: int, check: Check) -> np.ndarray:
        """log w [B, proposals] for the seed's first draws, for importance resampling."""
        rows_per_run, draws = self._plan(proposals)
        log_w = np.empty((len(x), proposals))
        for start in range(0, len(x), rows_per_run):
            rows = slice(start, min(start + rows_per_run, len(x)))
            column = 0
            for eps in self.noise.chunks(seed, proposals, draws):
                check()
                chunk = self._run_chunk(Variant("posterior"), x[rows], eps[None], start)
                log_w[rows, column : column + len(eps)] = chunk.log_w
                column += len(eps)
        return log_w

    def warm_up(self) -> None:
        """Runs every session once (first runs allocate), checking output shapes against the manifest."""
        m = self.manifest
        x = np.full((2, m.dim), 0.5 if m.bounded else 0.0, np.float32)
        mean, logvar = self.encode(x)
        if mean.shape != (2, m.latent_dim) or logvar.shape != (2, m.latent_dim):
            raise BundleError(f"encoder returned {mean.shape} and {logvar.shape}; expected (2, {m.latent_dim})")
        params = self.decode(mean)
        for name in m.decoder_outputs:
            if params[name].shape != (2, *m.input_shape):
                raise BundleError(
                    f"decoder output {name!r} has shape {params[name].shape}; "
                    f"expected (2, {', '.join(map(str, m.input_shape))})"
                )
        big = np.repeat(x[:1], SMALL_RUN + 1, axis=0)  # the multi-threaded sessions too
        self.decode(self.encode(big)[0])
        for variant in _VARIANTS:
            self._estimate(x, 2, np.zeros(2, np.uint64), variant, no_check)
            self._estimate(big, 2, np.zeros(len(big), np.uint64), variant, no_check)
        self._estimate(x, 32, np.zeros(2, np.uint64), Variant("posterior"), no_check)  # the Pareto tail fit


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.exp(-np.logaddexp(0.0, -logits)).astype(np.float32)
    return out
