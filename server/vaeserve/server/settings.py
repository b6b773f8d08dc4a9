"""The server's settings: one class, built once in ``main()`` and passed down.

Precedence, highest first: command-line flags, environment variables (``VAESERVE_`` +
the field name in capitals), the TOML file named by ``--config`` / ``VAESERVE_CONFIG``,
then the defaults below. This is the only module that reads the environment.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import tomllib
import types
import typing
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from vaeserve.api.scores import ANOMALY_SCORES
from vaeserve.server.boundary.auth import read_tokens

__all__ = ["Settings", "default_bundle", "load_settings", "usable_cores"]


def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Cores this process may use: its CPU affinity (taskset, cpusets), capped by a cgroup v2 CPU quota
    (a container's CPU limit, e.g. Kubernetes' `limits.cpu: 2`), rounded up."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota here
    return cores


def default_bundle() -> Path:
    """The bundled digits model, installed with the server package."""
    return Path(str(resources.files("vaeserve.server").joinpath("bundled", "digits")))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VAESERVE_", extra="forbid", validate_default=True)

    config: Path | None = Field(None, description="TOML file of settings (below flags and environment)")
    bundle: Path | None = Field(
        None, description="one model bundle directory to serve (default: the bundled digits model)"
    )
    model_repository: Path | None = Field(
        None,
        description="directory of models to serve: <dir>/<name>/<version>/ holds a bundle (Triton's layout), or "
        "<dir>/<name>/ holds one, served as version 1",
    )
    default_model: str | None = Field(None, description="the model for requests that name none")
    repository_poll_s: float | None = Field(
        None, gt=0.0, description="re-scan the repository every so many seconds, loading and retiring versions"
    )
    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(50051, ge=0, le=65535, description="port to listen on (0: any free port)")
    workers: int | Literal["auto"] = Field(
        1,
        description="server processes sharing the port (SO_REUSEPORT), each serving every model; auto: one per "
        "core. With more than one, onnxruntime threads default to cores / workers and metrics add up over workers",
    )
    device: Literal["cpu", "cuda", "auto"] = Field("auto", description="execution provider: cpu, cuda or auto")
    strict_device: bool = Field(False, description="refuse to start when device=cuda cannot be used")
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime threads per run (0: one per core)")
    allow_spinning: bool = Field(
        False, description="onnxruntime threads spin between runs (costs a core; slower here on 2 cores)"
    )
    executor_threads: int = Field(
        1, ge=1, description="runs on the thread pool at once (each uses intra_op_threads; more oversubscribe the CPU)"
    )
    engine_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="OS niceness of the threads that run engine work (Linux): on a saturated machine the event "
        "loop, which answers light calls, gets the CPU first (0: same priority)",
    )
    max_queue_ms: float | None = Field(
        None,
        gt=0.0,
        description="refuse (RESOURCE_EXHAUSTED) a request whose engine run waited this long for a thread "
        "(unset: no limit)",
    )
    inline_rows: int = Field(
        64,
        ge=0,
        description="work of up to this many inputs x draws runs on the event loop (cheaper than a thread hop)",
    )
    chunk_samples: int = Field(2048, ge=1, description="inputs x draws per onnxruntime run (bounds memory)")
    noise_cache_mb: int = Field(64, ge=0, description="memory for cached noise draws of recent seeds")
    max_batch: int = Field(8192, ge=1, description="most inputs in one request")
    max_k: int = Field(10_000, ge=1, description="most importance samples per input")
    max_samples: int = Field(100_000, ge=1, description="most latent draws in one Sample or Encode request")
    max_in_flight: int = Field(128, ge=1, description="requests in progress at once; beyond it RESOURCE_EXHAUSTED")
    max_message_mb: int = Field(64, ge=1, description="largest request or reply message")
    max_request_mb_in_flight: int | None = Field(
        256,
        ge=1,
        description="most request megabytes being worked on at once; beyond it RESOURCE_EXHAUSTED (bounds memory "
        "whatever clients send; unset: no bound)",
    )
    default_k: int | None = Field(
        None, ge=1, description="K when a Score request gives none (default: the calibration's K, else 1000)"
    )
    default_seed: int = Field(0, ge=0, lt=2**64, description="seed when a request gives none")
    alpha: float = Field(
        0.01, gt=0.0, le=1.0, description="level of the anomaly flags: is_anomaly = p_value <= alpha (conformal)"
    )
    threshold_quantile: float | None = Field(
        None, ge=0.0, lt=1.0, description="deprecated: alpha = 1 - threshold_quantile (alpha wins when both are set)"
    )
    anomaly_scores: Annotated[tuple[str, ...] | None, NoDecode] = Field(
        None,
        description="anomaly scores a Score request gets when it names none, comma-separated (the first fills "
        "`anomaly`); a model serves those it can (default, from the anomaly benchmark: combined, reconstruction, "
        "nll and complexity for image models; nll, reconstruction and combined for others)",
    )
    batching: bool = Field(True, description="merge concurrent small requests into one run")
    batch_max_inputs: int = Field(256, ge=1, description="most inputs in one merged run")
    batch_max_delay_ms: float = Field(
        0.0,
        ge=0.0,
        description="how long a batch waits for more requests (0: it takes what is queued when the engine is free)",
    )
    batch_max_k: int = Field(64, ge=1, description="Score requests with K (and calibration K) up to this are merged")
    http_port: int | None = Field(
        None, ge=0, le=65535, description="serve the Open Inference Protocol (KServe V2) over HTTP on this port"
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="serve Prometheus metrics over HTTP on this port (unset: off)"
    )
    tracing: bool = Field(
        False,
        description="export OpenTelemetry traces over OTLP/gRPC, configured by the standard OTEL_* variables "
        "(needs the vaeserve-server[tracing] extra)",
    )
    grace_s: float = Field(30.0, ge=0.0, description="on SIGTERM, time allowed for requests in flight")
    tls_cert: Path | None = Field(None, description="PEM server certificate (enables TLS)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(None, description="PEM CA bundle that client certificates must chain to")
    require_client_cert: bool = Field(False, description="mutual TLS: refuse clients without a valid certificate")
    auth_tokens: Path | None = Field(
        None, description="file of bearer tokens, one per line: every call needs one (unset: no token needed)"
    )
    admin_tokens: Path | None = Field(
        None, description="file of bearer tokens that may also call LoadModel and UnloadModel (and everything else)"
    )
    auth_health: bool = Field(
        False,
        description="health checks, reflection and the HTTP API's page (/v2/docs, /v2/openapi.json) need a token "
        "too (off: open to probes and browsers)",
    )
    drain_delay_s: float = Field(
        0.0,
        ge=0.0,
        description="on SIGTERM, health turns NOT_SERVING at once and requests are still taken for this long, so "
        "load balancers move away before the listener closes",
    )
    handshake_timeout_s: float = Field(
        10.0, gt=0.0, description="close a connection that has not finished its TLS/HTTP/2 handshake by then"
    )
    max_connection_idle_s: float | None = Field(
        300.0, gt=0.0, description="close a connection with no call for this long (unset: never)"
    )
    max_connection_age_s: float | None = Field(
        None, gt=0.0, description="close every connection after this long, letting its calls finish (unset: never)"
    )
    keepalive_s: float = Field(
        60.0, gt=0.0, description="ping a connection silent for this long; one that does not answer is closed"
    )
    keepalive_timeout_s: float = Field(20.0, gt=0.0, description="how long a keepalive ping waits for its answer")
    max_concurrent_streams: int = Field(100, ge=1, description="most calls at once on one connection")
    replica_id: str = Field(default_factory=socket.gethostname, description="name of this replica in replies")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    log_requests: bool = Field(True, description="one log line per request")
    payload_log: str | None = Field(
        None, description="log scored inputs and scores to this file (one per worker) or http(s):// URL (unset: off)"
    )
    payload_log_sample: float = Field(1.0, ge=0.0, le=1.0, description="fraction of Score requests logged")
    payload_log_raw: bool = Field(False, description="log input values, not only their sha256 hashes")
    payload_log_max_bytes: int = Field(65536, ge=0, description="a request's inputs above this log hashes only")
    payload_log_rotate_mb: float = Field(100.0, gt=0.0, description="start a new payload log file at this size")
    payload_log_keep: int = Field(5, ge=0, description="rotated payload log files kept")
    payload_log_queue: int = Field(10_000, ge=1, description="records waiting for the sink; beyond: dropped, counted")

    @field_validator("anomaly_scores", mode="before")
    @classmethod
    def _score_names(cls, value: Any) -> Any:
        if value is None:
            return None
        names = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        known = [s.name for s in ANOMALY_SCORES]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise ValueError(f"anomaly scores are {', '.join(known)}; got {', '.join(map(str, names)) or 'none'}")
        return tuple(names)

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("workers is a count of at least 1, or auto")
        return value

    @property
    def worker_count(self) -> int:
        """How many server processes `workers` asks for (auto: the cores this process may run on)."""
        return usable_cores() if self.workers == "auto" else int(self.workers)

    @field_validator("auth_tokens", "admin_tokens")
    @classmethod
    def _tokens_readable(cls, path: Path | None) -> Path | None:
        if path is not None:
            read_tokens(path)  # a missing or empty file is an error at start, not an open door
        return path

    @property
    def flag_alpha(self) -> float:
        """alpha, or 1 - threshold_quantile where only that was given."""
        if self.threshold_quantile is not None and "alpha" not in self.model_fields_set:
            return 1.0 - self.threshold_quantile
        return self.alpha

    @model_validator(mode="after")
    def _one_source(self) -> Settings:
        if self.bundle is not None and self.model_repository is not None:
            raise ValueError("give bundle or model_repository, not both")
        if self.bundle is None and self.model_repository is None:
            self.bundle = default_bundle()
        return self

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.require_client_cert and (self.tls_cert is None or self.tls_client_ca is None):
            raise ValueError("require_client_cert needs tls_cert, tls_key and tls_client_ca")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _TomlFile(settings_cls)


class _TomlFile(PydanticBaseSettingsSource):
    """The file named by the `config` setting, as found by the sources above it."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = self.current_state.get("config")
        if not path:
            return {}
        try:
            return tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"config file {path}: {exc}") from exc


def _flag_kwargs(field: FieldInfo) -> dict[str, Any]:
    annotation = field.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) is Literal:
        return {"choices": list(typing.get_args(annotation))}
    if isinstance(annotation, types.UnionType) and len(args) == 1 and typing.get_origin(args[0]) is Literal:
        return {"choices": list(typing.get_args(args[0]))}
    return {}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vaeserve-server",
        description="Serve a VAE model bundle over gRPC. Every flag can also be set as an environment "
        "variable VAESERVE_<NAME> or in the TOML file given by --config.",
    )
    for name, field in Settings.model_fields.items():
        p.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=argparse.SUPPRESS,
            help=field.description,
            **_flag_kwargs(field),
        )
    return p


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    flags = vars(parser().parse_args(argv))
    return Settings(**flags)
