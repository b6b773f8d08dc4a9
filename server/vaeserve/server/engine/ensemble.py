"""A cross-fitted ensemble (bundle format 2) behind the engine's interface: F members, one model.

Scoring is the equal-weight mixture p(x) = (1/F) sum_f p_f(x): member f takes its share of the
request's K draws (`member_draws`, from its own seed `member_seed`), and the mixture's IWAE is
log((1/F) sum_f p_f_hat(x)), each p_f_hat the mean of member f's importance weights: an unbiased
estimate of p(x) whatever the shares, so K need not divide by F. The ELBO columns are the members'
means: each member's ELBO bounds its log p_f(x), and by Jensen their mean bounds the mixture's.
Encode, Decode and Sample use member 0: the members' latent spaces are not aligned, so there is no
meaningful average of their codes. Everything is reported in member 0's model space (the manifest's
preprocessing); a member whose preprocessing differs (a table's standardization fitted on its own
training rows) has its inputs mapped and its Gaussian densities shifted by the change of variables.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from vaeserve.api.manifest import Manifest, member_draws, member_seed
from vaeserve.server.engine.adaptive import score_adaptive
from vaeserve.server.engine.bundle import Bundle
from vaeserve.server.engine.engine import Check, Engine, no_check
from vaeserve.server.engine.noise import NoiseCache
from vaeserve.server.engine.psis import KHAT_UNRELIABLE
from vaeserve.server.engine.results import ScoreOptions, ScoreResult
from vaeserve.server.engine.runtime import RuntimeConfig

__all__ = ["EnsembleEngine", "member_seeds", "open_engine"]


def member_seeds(seeds: np.ndarray, f: int) -> np.ndarray:
    """member_seed of each seed, vectorized (uint64 arithmetic wraps around 2**64 as member_seed does)."""
    return np.asarray(seeds, dtype=np.uint64) + np.uint64(member_seed(0, f))


class EnsembleEngine:
    def __init__(
        self,
        bundle: Bundle,
        config: RuntimeConfig | None = None,
        *,
        chunk_samples: int = 2048,
        noise_cache: NoiseCache | None = None,
    ) -> None:
        self.bundle = bundle
        self.manifest: Manifest = bundle.manifest
        self.members = [
            Engine(member, config, chunk_samples=chunk_samples, noise_cache=noise_cache) for member in bundle.members
        ]
        lead = self.lead = self.members[0]
        self.provider = lead.provider
        self.noise = lead.noise
        reference = self.manifest.preprocessing
        gaussian = self.manifest.likelihood == "gaussian"
        dim = self.manifest.dim
        self._same_space = [m.manifest.preprocessing == reference for m in self.members]
        # log |d x_f / d x_0| per feature: what a Gaussian member's densities gain in member 0's space.
        self._dim_offsets = [
            np.broadcast_to(
                np.log(np.abs(np.asarray(m.manifest.preprocessing.scale, np.float64)))
                - np.log(np.abs(np.asarray(reference.scale, np.float64))),
                (dim,),
            )
            if gaussian and not same
            else np.zeros(dim)
            for m, same in zip(self.members, self._same_space)
        ]
        self.offsets = np.array([float(o.sum()) for o in self._dim_offsets])

    @property
    def size(self) -> int:
        return len(self.members)

    # --- what member 0 answers ---------------------------------------------------------------

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        return self.lead.prepare(raw)

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.lead.encode(x)

    def decode(self, z: np.ndarray) -> dict[str, np.ndarray]:
        return self.lead.decode(z)

    def posterior_samples(self, x: np.ndarray, n: int, seed: int, **kwargs: Any) -> Any:
        return self.lead.posterior_samples(x, n, seed, **kwargs)

    def sample_x(self, params: dict[str, np.ndarray], seed: int) -> np.ndarray:
        return self.lead.sample_x(params, seed)

    def sample_prior(self, n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.lead.sample_prior(n, seed)

    def warm_up(self) -> None:
        for member in self.members:
            member.warm_up()

    # --- the members together --------------------------------------------------------------------

    def member_input(self, x: np.ndarray, f: int) -> np.ndarray:
        """Member 0's model-space inputs in member f's model space."""
        if self._same_space[f]:
            return x
        raw = self.manifest.preprocessing.invert(x)
        return self.members[f].manifest.preprocessing.apply(raw)

    def _to_reference(self, x: np.ndarray, f: int) -> np.ndarray:
        if self._same_space[f]:
            return x
        shape = x.shape
        raw = self.members[f].manifest.preprocessing.invert(x.reshape(len(x), -1))
        return self.manifest.preprocessing.apply(raw).reshape(shape)

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """The members' mean E[x|z] at their posterior means, in member 0's model space."""
        parts = [self._to_reference(m.reconstruct(self.member_input(x, f)), f) for f, m in enumerate(self.members)]
        return np.mean(parts, axis=0).astype(np.float32)  # type: ignore[no-any-return]

    def score(
        self, x: np.ndarray, options: ScoreOptions, seed: int | np.ndarray, check: Check = no_check
    ) -> ScoreResult:
        seeds = np.broadcast_to(np.asarray(seed, dtype=np.uint64), (len(x),))
        if options.target_se is None:
            return self._score_fixed(x, options, seeds, check)
        return score_adaptive(self._score_fixed, x, options, seeds, check)

    def _score_fixed(self, x: np.ndarray, options: ScoreOptions, seeds: np.ndarray, check: Check) -> ScoreResult:
        parts = []
        for f, member in enumerate(self.members):
            own = replace(
                options, k=member_draws(options.k, self.size, f), target_se=None, max_k=None, reconstruction=False
            )
            parts.append(member.score(self.member_input(x, f), own, member_seeds(seeds, f), check))
        return self._combine(x, options, parts)

    def _combine(self, x: np.ndarray, options: ScoreOptions, parts: list[ScoreResult]) -> ScoreResult:
        def stacked(name: str, shift: bool = False) -> np.ndarray:
            values = np.stack([p[name] for p in parts], axis=1)
            return values + self.offsets if shift else values

        log_px = stacked("log_px", shift=True)
        mixture, mixture_se, mixture_ess = _mixture(log_px, stacked("log_px_se"), stacked("ess"))
        elbo = stacked("elbo", shift=True).mean(axis=1)
        elbo_se = np.sqrt((stacked("elbo_se") ** 2).sum(axis=1)) / self.size
        pareto_k = np.fmax.reduce(stacked("pareto_k"), axis=1)
        columns = {
            "elbo": elbo,
            "elbo_se": elbo_se,
            "reconstruction_term": stacked("reconstruction_term", shift=True).mean(axis=1),
            "kl": stacked("kl").mean(axis=1),
            "expected_log_joint": stacked("expected_log_joint", shift=True).mean(axis=1),
            "entropy": stacked("entropy").mean(axis=1),
            "log_px": mixture,
            "log_px_se": mixture_se,
            "ess": mixture_ess,
            "pareto_k": pareto_k,
            "unreliable": pareto_k > KHAT_UNRELIABLE,
            "bits_per_dim": -mixture / (self.manifest.dim * math.log(2.0)),
            "gap": mixture - elbo,
            "gap_se": np.sqrt(elbo_se**2 + mixture_se**2),
            "disagreement": log_px.std(axis=1, ddof=1),
        }
        if options.prior_estimate:
            prior, prior_se, prior_ess = _mixture(
                stacked("prior_log_px", shift=True), stacked("prior_log_px_se"), stacked("prior_ess")
            )
            columns.update(prior_log_px=prior, prior_log_px_se=prior_se, prior_ess=prior_ess)
        result = ScoreResult(columns, member_nll=-stacked("log_px"))
        if all(p.sq_err is not None for p in parts):
            result.sq_err = np.stack([p.sq_err for p in parts], axis=1)  # type: ignore[misc]
        if options.per_dim and all(p.per_dim is not None for p in parts):
            shape = parts[0].per_dim.shape  # type: ignore[union-attr]
            flat = [p.per_dim.reshape(len(x), -1) + o for p, o in zip(parts, self._dim_offsets)]  # type: ignore[union-attr]
            result.per_dim = np.mean(flat, axis=0).reshape(shape)
        if options.reconstruction:
            result.reconstruction = self.reconstruct(x)
        return result


def _mixture(log_p: np.ndarray, se: np.ndarray, ess: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log of the mean over members of p_f_hat [B, F] (given as logs), its delta-method standard error (the
    members' estimates independent) and the effective sample size of the members' weights each scaled by
    1 / K_f: (sum_f p_f)^2 / sum_f p_f^2 / ess_f."""
    top = log_p.max(axis=1, keepdims=True)
    r = np.exp(log_p - top)
    total = r.sum(axis=1)
    log_mean = np.log(total) + top[:, 0] - math.log(log_p.shape[1])
    log_se = np.sqrt(((r * se) ** 2).sum(axis=1)) / total
    mixture_ess = total**2 / (r**2 / ess).sum(axis=1)
    return log_mean, log_se, mixture_ess


def open_engine(
    bundle: Bundle,
    config: RuntimeConfig | None = None,
    *,
    chunk_samples: int = 2048,
    noise_cache: NoiseCache | None = None,
) -> Engine | EnsembleEngine:
    """The engine of a bundle of either format."""
    kind = EnsembleEngine if bundle.members else Engine
    return kind(bundle, config, chunk_samples=chunk_samples, noise_cache=noise_cache)
