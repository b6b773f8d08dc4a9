"""The payload log: a sample of scored requests, written off the request path.

The request path only draws the sample and puts a `ScoreEntry` (references to arrays the reply is
built from) on a queue bounded in records and in bytes: no hashing, no JSON, no I/O. One writer thread per process turns
entries into records and writes them in batches. When the sink is slow or blocked the queue
fills and new entries are dropped at once: scoring never waits for the log, and every record lost
is counted in `vaeserve_payload_records_dropped_total` by reason (queue_full, sink_error, shutdown,
error), every one kept in `vaeserve_payload_records_written_total`.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from vaeserve.server.boundary.guard import RequestInfo
from vaeserve.server.boundary.metrics import Metrics
from vaeserve.server.payload.record import InputPolicy, ScoreEntry, score_event
from vaeserve.server.payload.sinks import Sink, open_sink
from vaeserve.server.serving.calls import Scored
from vaeserve.server.settings import Settings

__all__ = ["PayloadLog", "open_payload_log"]

log = logging.getLogger(__name__)
BATCH = 256  # records per write (per POST for the HTTP sink)
GATHER_S = 0.05  # how long the writer lets records gather after the first one arrives
QUEUE_BYTES = 256 << 20  # inputs and scores held by queued entries: large requests cannot pile up in memory
_ROW_BYTES = 256  # an input's score columns, roughly
_WARN_EVERY_S = 60.0  # a failing sink is logged once a minute, not once a batch


class PayloadLog:
    def __init__(
        self,
        sink: Sink,
        *,
        source: str,
        sample: float = 1.0,
        policy: InputPolicy | None = None,
        queue_size: int = 10_000,
        metrics: Metrics | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.sink, self.source, self.sample = sink, source, sample
        self.policy = policy or InputPolicy()
        self.metrics = metrics
        self._draw = draw
        self._queue: queue.Queue[ScoreEntry] = queue.Queue(queue_size)
        self._bytes = 0  # held by entries not yet written; both threads change it, under the lock
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._abandoned = False
        self._warned_at = -_WARN_EVERY_S
        self._thread = threading.Thread(target=self._run, name="vaeserve-payload-log", daemon=True)
        self._thread.start()

    def score(self, info: RequestInfo, model: str, version: str, x: np.ndarray, scored: Scored) -> None:
        """On the request path: a sampled Score call's inputs and results, queued or counted dropped."""
        if self.sample < 1.0 and self._draw() >= self.sample:
            return
        if scored.result.per_dim is not None or scored.result.reconstruction is not None:
            # Not logged: an entry should not keep [B, D] arrays alive while it waits.
            scored = replace(scored, result=replace(scored.result, per_dim=None, reconstruction=None))
        entry = ScoreEntry(info.request_id, info.protocol, info.method, model, version, x, scored, time.time())
        cost = _cost(entry)
        with self._lock:
            full = bool(self._bytes) and self._bytes + cost > QUEUE_BYTES  # one entry alone always goes
            if not full:
                try:
                    self._queue.put_nowait(entry)
                except queue.Full:
                    full = True
                else:
                    self._bytes += cost
        if full:
            self._count(dropped=1, reason="queue_full")

    def close(self, timeout_s: float = 5.0) -> None:
        """Writes what is queued, for up to `timeout_s` (a blocked sink cannot hold the shutdown longer)."""
        self._closing.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._abandoned = True
            left = self._queue.qsize()
            log.warning("payload log: the sink did not take %d queued record(s) before shutdown", left)
            self._count(dropped=left, reason="shutdown")

    # --- the writer thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not (self._closing.is_set() and self._queue.empty()) and not self._abandoned:
            try:
                batch = [self._queue.get(timeout=0.2)]  # the timeout only lets a close be seen
            except queue.Empty:
                continue
            # Gather for a moment before writing: one wake-up (and one GIL hand-over) per batch, not per record,
            # is what keeps the writer from slowing the event loop at a few hundred requests a second.
            self._closing.wait(GATHER_S)
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write(batch)
            with self._lock:  # after the write: a batch held by a hung sink still counts
                self._bytes -= sum(_cost(entry) for entry in batch)
        self.sink.close()

    def _write(self, batch: list[ScoreEntry]) -> None:
        lines = []
        for entry in batch:
            try:
                event = score_event(entry, self.source, self.policy)
                lines.append(json.dumps(event, separators=(",", ":"), allow_nan=False).encode() + b"\n")
            except Exception:
                log.exception("payload log: could not build the record of request %s", entry.request_id)
                self._count(dropped=1, reason="error")
        if not lines:
            return
        try:
            self.sink.write(lines)
        except Exception as exc:
            self._count(dropped=len(lines), reason="sink_error")
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY_S:
                self._warned_at = now
                log.warning("payload log: the sink refused %d record(s) (%s); dropping them", len(lines), exc)
            return
        self._count(written=len(lines))

    def _count(self, *, written: int = 0, dropped: int = 0, reason: str = "") -> None:
        if self.metrics is not None:
            self.metrics.count_payload(written=written, dropped=dropped, reason=reason)


def _cost(entry: ScoreEntry) -> int:
    return entry.x.nbytes + len(entry.x) * _ROW_BYTES


def open_payload_log(settings: Settings, worker: int | None, metrics: Metrics | None) -> PayloadLog | None:
    """The process's payload log, or None when `payload_log` is unset. A worker calls it after it is
    spawned, so each process has its own writer thread and its own file."""
    if not settings.payload_log:
        return None
    sink = open_sink(
        settings.payload_log,
        worker=worker,
        rotate_bytes=int(settings.payload_log_rotate_mb * 2**20),
        keep=settings.payload_log_keep,
    )
    return PayloadLog(
        sink,
        source=f"/vaeserve/{settings.replica_id}",
        sample=settings.payload_log_sample,
        policy=InputPolicy(settings.payload_log_raw, settings.payload_log_max_bytes),
        queue_size=settings.payload_log_queue,
        metrics=metrics,
    )
