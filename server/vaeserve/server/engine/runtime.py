"""onnxruntime sessions: execution provider choice, threading, and IO binding on CUDA."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

__all__ = ["ProviderUnavailable", "Runner", "RuntimeConfig", "SizedRunner", "choose_providers"]

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class ProviderUnavailable(RuntimeError):
    """CUDA was required (strict) but cannot be used."""


@dataclass(frozen=True)
class RuntimeConfig:
    device: Literal["cpu", "cuda", "auto"] = "auto"
    strict_device: bool = False
    intra_op_threads: int = 0  # 0: onnxruntime's default (one per physical core)
    allow_spinning: bool = False
    cuda_device_id: int = 0


def choose_providers(config: RuntimeConfig) -> list[str]:
    available = ort.get_available_providers()
    if config.device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    why = f"onnxruntime {ort.__version__} has no {CUDA} (available: {', '.join(available)}; install onnxruntime-gpu)"
    if config.device == "cuda":
        if config.strict_device:
            raise ProviderUnavailable(f"device=cuda with strict_device: {why}")
        log.warning("device=cuda asked for, falling back to CPU: %s", why)
    return [CPU]


class Runner:
    """One session; `run` takes numpy feeds and returns numpy outputs.

    On CUDA the feeds are bound once per run and only the requested outputs are copied
    back, so fused intermediates such as the K-fold decoder output stay on the device.
    """

    def __init__(
        self, model: onnx.ModelProto, config: RuntimeConfig, providers: list[str], threads: int | None = None
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = config.intra_op_threads if threads is None else threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.allow_spinning else "0")
        provider_options = [{"device_id": str(config.cuda_device_id)} if p == CUDA else {} for p in providers]
        self.session = ort.InferenceSession(
            model.SerializeToString(), options, providers=providers, provider_options=provider_options
        )
        self.provider = self.session.get_providers()[0]
        if CUDA in providers and self.provider != CUDA:
            if config.strict_device:
                raise ProviderUnavailable(f"{CUDA} could not be initialised (no GPU or driver?)")
            log.warning("%s could not be initialised; running on %s", CUDA, self.provider)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.io_binding = self.provider == CUDA  # works on CPU too, which is how the tests cover it

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.io_binding:
            return self.session.run(outputs, feeds)  # type: ignore[no-any-return]
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()  # type: ignore[no-any-return]


class SizedRunner:
    """Two sessions of one graph: single-threaded for small runs, where waking a thread pool costs more
    than it saves, and with the configured threads for the rest."""

    def __init__(self, model: onnx.ModelProto, config: RuntimeConfig, providers: list[str], small_rows: int) -> None:
        self.large = Runner(model, config, providers)
        self.small = Runner(model, config, providers, threads=1) if CUDA not in providers else self.large
        self.small_rows = small_rows
        self.provider = self.large.provider

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray], rows: int) -> list[np.ndarray]:
        return (self.small if rows <= self.small_rows else self.large).run(outputs, feeds)
