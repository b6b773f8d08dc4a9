"""Where a run happens: an existing Ray cluster (--address), or a local instance started for the run.

Ray is imported inside the functions: `loopback_only` has to run before Ray's first import.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from vaeserve.batch.terminal import ray_init_options

__all__ = ["BatchError", "Cluster", "connect", "loopback_only"]


class BatchError(Exception):
    """A run that cannot go on: too few CPUs for the actors, or a task that failed on a bad input (the
    message names its file and row)."""


@dataclass(frozen=True)
class Cluster:
    """An existing cluster's address, or None for a local instance with num_cpus (default: all)."""

    address: str | None = None
    num_cpus: int | None = None
    actors: int | None = None  # default: as many as the cluster's CPUs hold at `threads` each
    threads: int = 1  # onnxruntime threads per actor

    def actor_count(self) -> int:
        """The scoring actors, checked against the CPUs of the connected cluster."""
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 0))  # type: ignore[no-untyped-call]
        actors = self.actors or max(1, cpus // self.threads)
        if actors * self.threads > cpus:
            raise BatchError(
                f"{actors} actors x {self.threads} threads need {actors * self.threads} CPUs; the cluster has {cpus}"
            )
        return actors


def loopback_only() -> None:
    """A local instance serves this process alone, so it listens on 127.0.0.1 instead of the host's network
    address. Ray reads this switch once, at its first import (on Linux it otherwise serves single-machine
    clusters on Windows and macOS, where it is the default); call this before anything imports Ray."""
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def connect(cluster: Cluster, *, verbose: bool = False) -> bool:
    """Joins the cluster, or starts the local instance; False when Ray was already initialised (left as it is).
    Ray's start-up lines and the workers' output reach the terminal only when verbose."""
    import ray

    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no prompt, nothing sent
        if cluster.address:
            ray.init(address=cluster.address, **ray_init_options(verbose))
        else:  # "local": a new instance, never one that `ray start` left recorded in /tmp/ray
            cpus = cluster.num_cpus or os.cpu_count() or 1
            ray.init("local", num_cpus=cpus, include_dashboard=False, **ray_init_options(verbose))
    return started
