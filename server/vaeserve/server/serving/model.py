"""The served model: one version's engine plus what serving adds (limits, defaults, batching, deadlines).

Protocols hand it protocol-free calls (`serving.calls`) in raw units; it checks them against
its limits (`checks`), fills in its defaults (`policy`), and runs the work. Engine calls are
CPU-bound and release the GIL inside onnxruntime, so they run on the process-wide thread pool
shared by every model; the event loop stays free for the network. A call's `check` is polled
between chunks of work, so a passed deadline or a cancelled call stops it there. Small calls of
the same kind are merged into one run (`dynamic_batching`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import numpy as np

from vaeserve.api.manifest import Manifest
from vaeserve.server.anomaly import alpha_of, open_scorer
from vaeserve.server.boundary.metrics import Metrics
from vaeserve.server.engine import Engine, EnsembleEngine, ScoreOptions, ScoreResult, no_check
from vaeserve.server.errors import Cancelled, DeadlineExceeded
from vaeserve.server.serving.calls import (
    DecodeCall,
    Decoded,
    EncodeCall,
    Encoded,
    SampleCall,
    Sampled,
    ScoreCall,
    Scored,
)
from vaeserve.server.serving.checks import Limits, RequestChecks
from vaeserve.server.serving.dynamic_batching import DynamicBatcher
from vaeserve.server.serving.lease import InFlight
from vaeserve.server.serving.lease import Lease as _Lease
from vaeserve.server.serving.policy import (
    AnomalyPlan,
    anomaly_plan,
    defaults_of,
    draws_per_input,
    run_score,
    score_options,
    scored,
)
from vaeserve.server.serving.work_queue import WorkQueue
from vaeserve.server.settings import Settings

if TYPE_CHECKING:  # the payload log builds its records from serving's results: no import cycle at run time
    from vaeserve.server.boundary.guard import RequestInfo
    from vaeserve.server.payload import PayloadLog

__all__ = ["Lease", "ServedModel"]

T = TypeVar("T")

_BatchKey = str | tuple[str, ScoreOptions, AnomalyPlan]


@dataclass(frozen=True)
class _ScoreItem:
    x: np.ndarray
    seed: int
    options: ScoreOptions
    plan: AnomalyPlan
    alpha: float
    deadline: float | None


class ServedModel:
    """One version of one model. `settings` are the server's with the model's own file over them."""

    def __init__(
        self,
        engine: Engine | EnsembleEngine,
        settings: Settings,
        work: WorkQueue,
        *,
        name: str | None = None,
        version: str | None = None,
        metrics: Metrics | None = None,
        background: Engine | None = None,
        payload: PayloadLog | None = None,
    ) -> None:
        self.engine = engine
        self.payload = payload
        self.scorer = open_scorer(engine, background)
        self.manifest: Manifest = engine.manifest
        self.name = name or self.manifest.name
        self.version = version or self.manifest.version
        self.path: Path = engine.bundle.path
        self.replica_id = settings.replica_id
        self.limits = Limits.of(settings)
        self.checks = RequestChecks(self.limits, self.manifest, engine.prepare)
        self.defaults = defaults_of(self.manifest, self.scorer, settings)
        self.warnings = self.scorer.warnings(self.defaults.alpha)
        self._work = work
        self._batching = settings.batching
        self._batch_max_k = settings.batch_max_k
        self._inline_rows = settings.inline_rows
        self._batchers: dict[_BatchKey, DynamicBatcher[Any, Any]] = {}
        self._batch_max_inputs = settings.batch_max_inputs
        self._batch_max_delay_s = settings.batch_max_delay_ms / 1e3
        self.metrics = metrics
        self._in_flight = InFlight()

    # --- requests in flight, so a retired version finishes its work before it closes -----------

    def lease(self) -> Lease:
        """`async with model.lease():` holds the model for a request."""
        return self._in_flight.lease(self)

    @property
    def in_flight(self) -> int:
        return self._in_flight.count

    async def wait_idle(self) -> None:
        await self._in_flight.wait_idle()

    def _seed(self, seed: int | None) -> int:
        return self.defaults.seed if seed is None else seed

    # --- the calls -----------------------------------------------------------------------------

    async def encode(self, call: EncodeCall, deadline: float | None = None) -> Encoded:
        proposals = self.defaults.k if call.proposals is None else call.proposals
        x = self.checks.encode(call, proposals)
        n = call.n_samples
        seed = self._seed(call.seed)
        self._count("Encode", len(x))
        if n == 0:
            mean, logvar = await self._encode(x)
            return Encoded(mean, logvar, None, None, seed)
        engine = self.engine
        mean, logvar, samples, ess = await self.call(
            lambda check: engine.posterior_samples(
                x, n, seed, resample=call.resample, proposals=proposals, check=check
            ),
            deadline=deadline,
        )
        return Encoded(mean, logvar, samples, ess, seed)

    async def decode(self, call: DecodeCall) -> Decoded:
        z = self.checks.decode(call)
        self._count("Decode", len(z))
        return await self._decoded(z, call.sample, self._seed(call.seed))

    async def sample(self, call: SampleCall) -> Sampled:
        self.checks.sample(call)
        seed = self._seed(call.seed)
        self._count("Sample", call.n)
        z = await self.call(lambda check: self.engine.noise.draws(seed, call.n), rows=call.n)
        return Sampled(z, await self._decoded(z, call.sample_x, seed))

    async def _decoded(self, z: np.ndarray, sample: bool, seed: int) -> Decoded:
        params = await self._decode(z)
        x_sample = None
        if sample:
            x_sample = await self.call(lambda check: self.engine.sample_x(params, seed), rows=len(z))
        return Decoded(params, x_sample, seed)

    async def score(self, call: ScoreCall, deadline: float | None = None, info: RequestInfo | None = None) -> Scored:
        """`info`: the request it answers, named in the payload log (when one is on)."""
        k = self.defaults.k if call.k is None else call.k
        self.checks.k(k)
        alpha = alpha_of(call.alpha, call.threshold_quantile, self.defaults.alpha)
        target_se, max_k = self.checks.adaptive(call, k)
        x = self.checks.inputs(call.x)
        seed = self._seed(call.seed)
        plan, skipped = anomaly_plan(
            self.scorer,
            self.defaults.anomaly_scores,
            k=k,
            seed=seed,
            adaptive=target_se is not None,
            anomaly=call.anomaly,
            names=call.anomaly_scores,
            typicality=call.typicality,
        )
        options = score_options(
            k,
            plan,
            prior_estimate=call.prior_estimate,
            per_dim=call.per_dim,
            reconstruction=call.reconstruction,
            target_se=target_se,
            max_k=max_k,
        )
        self.checks.score_reply(len(x), len(plan.names), call)
        scored = await self._score(_ScoreItem(x, seed, options, plan, alpha, deadline))
        self._count_flags(scored)
        warnings = [*scored.warnings, *([skipped] if skipped else [])]
        scored = replace(scored, warnings=warnings) if skipped else scored
        if self.payload is not None and info is not None:
            self.payload.score(info, self.name, self.version, call.x, scored)  # what the reply is built from
        return scored

    # --- execution ------------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *, deadline: float | None = None, rows: int | None = None) -> T:
        """Runs fn(check=...); check raises once the deadline passes or the call is cancelled.

        Work of up to `inline_rows` rows (inputs x draws) runs right here on the event loop: it takes
        less time than handing it to a thread and back. Larger work runs on the shared pool.
        """
        if rows is not None and rows <= self._inline_rows:  # too short to be worth stopping
            return self._work.run_inline(lambda: fn(check=no_check), rows=rows, labels=(self.name, self.version))
        stop = threading.Event()

        def check() -> None:
            if stop.is_set():
                raise Cancelled("the call was cancelled")
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded("the deadline passed before the work was done")

        try:
            return await self._work.run(lambda: fn(check=check), rows=rows or 0, labels=(self.name, self.version))
        except asyncio.CancelledError:
            stop.set()
            raise

    def _count(self, method: str, inputs: int, draws: int = 0) -> None:
        if self.metrics:
            self.metrics.count_inputs(self.name, self.version, method, inputs, draws)

    def _count_flags(self, scored: Scored) -> None:
        """Per request, not per merged run: each request's flags are at its own alpha."""
        if self.metrics:
            for anomaly in scored.anomalies:
                flagged = int(np.count_nonzero(anomaly.is_anomaly))
                self.metrics.count_anomaly_flags(self.name, self.version, anomaly.name, flagged)

    async def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._batching:
            return await self._batcher("encode", self._encode_many).submit(x, len(x))
        return (await self._encode_many([x]))[0]

    async def _decode(self, z: np.ndarray) -> dict[str, np.ndarray]:
        if self._batching:
            return await self._batcher("decode", self._decode_many).submit(z, len(z))
        return (await self._decode_many([z]))[0]

    async def _score(self, item: _ScoreItem) -> Scored:
        cost_k = draws_per_input(item.options, item.plan, self.manifest)
        self._count("Score", len(item.x), item.options.k)
        if self._batching and cost_k <= self._batch_max_k and item.options.target_se is None:
            # One batcher per kind of work; each request's flags are set at its own alpha afterwards.
            key = ("score", item.options, item.plan)
            return await self._batcher(key, self._score_many).submit(item, len(item.x))
        return await self.call(
            lambda check: self._scored(item, self._run_score([item], check)),
            deadline=item.deadline,
            rows=len(item.x) * cost_k,
        )

    def _run_score(
        self, items: list[_ScoreItem], check: Callable[[], None]
    ) -> tuple[ScoreResult, dict[str, np.ndarray]]:
        """The work of one or more requests of the same kind: the estimates and the raw anomaly scores."""
        x = np.concatenate([item.x for item in items]) if len(items) > 1 else items[0].x
        seeds = np.concatenate([np.full(len(item.x), item.seed, np.uint64) for item in items])
        first = items[0]
        return run_score(self.engine, self.scorer, x, first.options, seeds, first.plan, check)

    def _scored(self, item: _ScoreItem, work: tuple[ScoreResult, dict[str, np.ndarray]]) -> Scored:
        return scored(
            self.scorer, work, item.options, item.plan, seed=item.seed, alpha=item.alpha, warnings=self.warnings
        )

    def _batcher(self, key: _BatchKey, run: Callable[[list[Any]], Awaitable[list[Any]]]) -> DynamicBatcher[Any, Any]:
        batcher = self._batchers.get(key)
        if batcher is None:
            kind = key if isinstance(key, str) else key[0]
            batcher = self._batchers[key] = DynamicBatcher(
                run,
                max_inputs=self._batch_max_inputs,
                max_delay_s=self._batch_max_delay_s,
                on_run=lambda inputs: self._observe_run(kind, inputs),
                tracing=self._work.tracing,
            )
        return batcher

    def _observe_run(self, kind: str, inputs: int) -> None:
        if self.metrics:
            self.metrics.observe_batch(self.name, self.version, kind, inputs)

    async def _encode_many(self, xs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        def run(check: Callable[[], None]) -> list[tuple[np.ndarray, np.ndarray]]:
            mean, logvar = self.engine.encode(np.concatenate(xs) if len(xs) > 1 else xs[0])
            return [(mean[s], logvar[s]) for s in _spans(xs)]

        return await self.call(run, rows=sum(len(x) for x in xs))

    async def _decode_many(self, zs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        def run(check: Callable[[], None]) -> list[dict[str, np.ndarray]]:
            params = self.engine.decode(np.concatenate(zs) if len(zs) > 1 else zs[0])
            return [{name: value[s] for name, value in params.items()} for s in _spans(zs)]

        return await self.call(run, rows=sum(len(z) for z in zs))

    async def _score_many(self, items: list[_ScoreItem]) -> list[Scored]:
        first = items[0]

        def run(check: Callable[[], None]) -> list[Scored]:
            result, raw = self._run_score(items, check)
            return [
                self._scored(item, (result.rows(s), {n: v[s] for n, v in raw.items()}))
                for item, s in zip(items, _spans([item.x for item in items]))
            ]

        # The merged run may stop at the last of its callers' deadlines (never, if one has none).
        deadlines = [item.deadline for item in items]
        deadline = None if None in deadlines else max(d for d in deadlines if d is not None)
        rows = sum(len(item.x) for item in items) * draws_per_input(first.options, first.plan, self.manifest)
        return await self.call(run, deadline=deadline, rows=rows)

    async def close(self) -> None:
        """Stops the batchers; the sessions go with the last reference (the work queue is the process's)."""
        for batcher in self._batchers.values():
            await batcher.close()


def _spans(parts: list[np.ndarray]) -> list[slice]:
    spans, start = [], 0
    for part in parts:
        spans.append(slice(start, start + len(part)))
        start += len(part)
    return spans


# What the registry hands a request: this model, held while the request runs.
Lease: TypeAlias = _Lease[ServedModel]
