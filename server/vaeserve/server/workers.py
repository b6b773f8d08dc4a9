"""`--workers N`: N server processes on one port, kept running by a supervisor that serves no call itself.

A server process uses about one core (its event loop), so more cores need more processes. The supervisor
reserves the ports (SO_REUSEPORT, so port 0 picks one port for all), starts each worker as a fresh
interpreter (spawn: nothing of gRPC or onnxruntime is ever forked), restarts a worker that dies, serves
the workers' summed Prometheus metrics, and on SIGTERM or SIGINT passes the signal on and waits while
every worker drains as a single server would. The kernel spreads new connections over the workers;
a connection stays with its worker, so clients that open several channels use every worker.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from vaeserve.server.settings import Settings, usable_cores
from vaeserve.server.worker import Worker
from vaeserve.server.worker_process import CANNOT_SERVE, run_worker

__all__ = ["Worker", "supervise", "worker_settings"]

log = logging.getLogger("vaeserve.server.workers")

_RESTART_DELAY_S = (0.5, 10.0)  # after an unexpected exit: first delay, doubling up to the second
_HEALTHY_S = 60.0  # a worker that ran this long before it died starts again from the first delay


def worker_settings(settings: Settings, index: int, port: int, http_port: int | None) -> Settings:
    """A worker's settings: the reserved ports, its own replica id, its share of the cores, no metrics port."""
    update: dict[str, object] = {
        "workers": 1,
        "port": port,
        "http_port": http_port,
        "metrics_port": None,
        "replica_id": f"{settings.replica_id}/w{index}",
    }
    if settings.intra_op_threads == 0:  # 0 means one thread per core: N workers would oversubscribe N-fold
        update["intra_op_threads"] = max(1, usable_cores() // settings.worker_count)
    return settings.model_copy(update=update)


@contextlib.contextmanager
def _reserved(host: str, port: int) -> Iterator[int]:
    """Binds (without listening) with SO_REUSEPORT, so that `port` (0: a free one) stays ours for the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        yield sock.getsockname()[1]


class _Supervisor:
    def __init__(self, settings: Settings, port: int, http_port: int | None) -> None:
        self.settings = settings
        self.port = port
        self.http_port = http_port
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, BaseProcess] = {}
        self.stopping = False
        self.restarts = 0
        self.started: dict[int, float] = {}

    def start(self, index: int) -> None:
        settings = worker_settings(self.settings, index, self.port, self.http_port)
        process = self.context.Process(
            target=run_worker,
            args=(settings, Worker(index, os.getpid(), self.settings.worker_count)),
            name=f"vaeserve-worker-{index}",
        )
        process.start()
        self.workers[index] = process
        self.started[index] = time.monotonic()

    def signal(self, signum: int, _frame: FrameType | None = None) -> None:
        if not self.stopping:
            log.info("%s: stopping %d workers (each drains)", signal.Signals(signum).name, len(self.workers))
        self.stopping = True
        for process in self.workers.values():
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    def run(self, metrics_dir: str) -> int:
        """Until every worker has exited after a stop; restarts those that die before it."""
        delay = {index: _RESTART_DELAY_S[0] for index in range(self.settings.worker_count)}
        due: dict[int, float] = {}
        code = 0
        deadline: float | None = None
        while self.workers or (due and not self.stopping):
            if self.stopping and deadline is None:
                deadline = time.monotonic() + self.settings.drain_delay_s + self.settings.grace_s + 10.0
            if deadline is not None and time.monotonic() > deadline:
                for process in self.workers.values():
                    log.error("worker %s did not drain in time; killing it", process.name)
                    process.kill()
                deadline = float("inf")
            sentinels = {process.sentinel: index for index, process in self.workers.items()}
            for sentinel in wait(list(sentinels), timeout=0.2):
                index = sentinels[sentinel]  # type: ignore[index]
                process = self.workers.pop(index)
                process.join()
                _mark_dead(process, metrics_dir)
                if self.stopping:
                    code = max(code, 0 if process.exitcode in (0, 130, -signal.SIGTERM) else 1)
                    continue
                if process.exitcode == CANNOT_SERVE:
                    log.error("worker %d cannot serve; stopping the others", index)
                    self.signal(signal.SIGTERM)
                    code = CANNOT_SERVE
                    continue
                if time.monotonic() - self.started[index] > _HEALTHY_S:
                    delay[index] = _RESTART_DELAY_S[0]
                log.error(
                    "worker %d (pid %s) exited with %s; restarting it in %.1f s",
                    index,
                    process.pid,
                    process.exitcode,
                    delay[index],
                )
                due[index] = time.monotonic() + delay[index]
                delay[index] = min(2 * delay[index], _RESTART_DELAY_S[1])
            for index, when in list(due.items()):
                if self.stopping:
                    due.clear()
                elif time.monotonic() >= when:
                    del due[index]
                    self.restarts += 1
                    self.start(index)
        return code


def _mark_dead(process: BaseProcess, metrics_dir: str) -> None:
    """Drops a dead worker's live gauges from the sums (its counters stay: they count what happened)."""
    from prometheus_client import multiprocess

    if process.pid is not None:
        multiprocess.mark_process_dead(process.pid, metrics_dir)  # type: ignore[no-untyped-call]


def _serve_metrics(host: str, port: int, metrics_dir: str) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=host, registry=registry)


def supervise(settings: Settings) -> int:
    """Runs `settings.worker_count` workers until SIGTERM or SIGINT; returns the process's exit code."""
    count = settings.worker_count
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("--workers needs SO_REUSEPORT to share a port (Linux); run one worker here")
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(_reserved(settings.host, settings.port))
        http_port = None
        if settings.http_port is not None:
            http_port = stack.enter_context(_reserved(settings.host, settings.http_port))
        metrics_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="vaeserve-metrics-"))
        # Workers inherit it and record into files there; it must be set before they import prometheus_client.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        supervisor = _Supervisor(settings, port, http_port)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, supervisor.signal)
        log.info(
            "listening on %s:%d with %d workers (pid %d supervises; SO_REUSEPORT)",
            settings.host,
            port,
            count,
            os.getpid(),
        )
        for index in range(count):
            supervisor.start(index)
        if settings.metrics_port is not None:
            _serve_metrics(settings.host, settings.metrics_port, metrics_dir)
        code = supervisor.run(metrics_dir)
        log.info("stopped (%d worker restarts)", supervisor.restarts)
        return code
