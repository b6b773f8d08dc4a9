"""The scoring engine: bundles, fused graphs, onnxruntime sessions, noise, input checks and estimators.

Everything a number depends on lives here; serving, training and the benchmarks import it
through this package's names.
"""

from vaeserve.server.engine.bundle import Bundle, BundleError, load_bundle
from vaeserve.server.engine.engine import Check, Engine, no_check
from vaeserve.server.engine.ensemble import EnsembleEngine, open_engine
from vaeserve.server.engine.noise import NoiseCache
from vaeserve.server.engine.results import ScoreOptions, ScoreResult
from vaeserve.server.engine.runtime import ProviderUnavailable, RuntimeConfig

__all__ = [
    "Bundle",
    "BundleError",
    "Check",
    "Engine",
    "EnsembleEngine",
    "NoiseCache",
    "ProviderUnavailable",
    "RuntimeConfig",
    "ScoreOptions",
    "ScoreResult",
    "load_bundle",
    "no_check",
    "open_engine",
]
