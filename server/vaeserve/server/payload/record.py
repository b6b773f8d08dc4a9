"""One scored request as a CloudEvent (a dict ready for JSON): what was scored and what came back.

Built on the payload log's writer thread from the very arrays the reply is converted from, so a
record's numbers are the reply's: JSON floats round-trip float64 exactly, and NaN and infinities,
which JSON cannot hold, are null (as in the Open Inference Protocol's HTTP replies).
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from vaeserve.api.scores import ANOMALY_FIELDS, anomaly_column
from vaeserve.server.serving.calls import Scored

__all__ = ["EVENT_TYPE", "InputPolicy", "ScoreEntry", "input_hashes", "score_event"]

EVENT_TYPE = "io.vaeserve.score"


@dataclass(frozen=True, slots=True)
class ScoreEntry:
    """What the request path hands over: references only, no work (the arrays are never written to)."""

    request_id: str
    protocol: str
    method: str
    model: str
    version: str
    x: np.ndarray  # the inputs as sent, raw units
    scored: Scored
    time: float  # seconds since the epoch


@dataclass(frozen=True)
class InputPolicy:
    raw: bool = False  # values as well as hashes
    max_bytes: int = 65536  # inputs larger than this keep their hashes only


def input_hashes(x: np.ndarray) -> list[str]:
    """sha256 of each input's little-endian bytes in row-major order: the bytes a client sends on the wire,
    so an auditor can hash their own copy (`hashlib.sha256(row.astype("<f4").tobytes())`) and find it."""
    wire = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
    if not len(x):
        return []
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in wire.reshape(len(x), -1)]


def _json(values: np.ndarray) -> Any:
    if values.ndim == 1 and values.dtype.kind == "f":  # a score column: cheaper in Python than through numpy
        return [v if math.isfinite(v) else None for v in values.tolist()]
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        boxed = values.astype(object)
        boxed[~np.isfinite(values)] = None
        return boxed.tolist()
    return values.tolist()


def _inputs(x: np.ndarray, policy: InputPolicy) -> dict[str, Any]:
    inputs: dict[str, Any] = {"name": "x", "dtype": x.dtype.name, "shape": list(x.shape), "sha256": input_hashes(x)}
    if policy.raw and x.nbytes <= policy.max_bytes:
        inputs["values"] = _json(x)
    elif policy.raw:
        inputs["values_omitted"] = f"{x.nbytes} bytes, over payload_log_max_bytes ({policy.max_bytes}): hashes only"
    return inputs


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _scores(scored: Scored) -> dict[str, Any]:
    columns = {name: _json(values) for name, values in scored.columns().items()}
    for a in scored.anomalies:
        columns.update({anomaly_column(a.name, f.name): _json(a.field(f.name)) for f in ANOMALY_FIELDS})
    return columns


def score_event(entry: ScoreEntry, source: str, policy: InputPolicy) -> dict[str, Any]:
    scored = entry.scored
    data: dict[str, Any] = {
        "request_id": entry.request_id,
        "protocol": entry.protocol,
        "method": entry.method,
        "model": entry.model,
        "version": entry.version,
        "k": scored.options.k,
        "seed": scored.seed,
        "inputs": _inputs(entry.x, policy),
        "scores": _scores(scored),
        "anomalies": [
            {
                "name": a.name,
                "alpha": a.alpha,
                "threshold": _finite(a.threshold),
                "n_calibration": a.n_calibration,
                "k": a.k,
                "estimator": a.estimator,
            }
            for a in scored.anomalies
        ],
        "warnings": list(scored.warnings),
    }
    if scored.typicality is not None:
        t = scored.typicality
        data["typicality"] = {
            "p_value": _finite(t.p_value),
            "is_atypical": t.is_atypical,
            "mean_score": _finite(t.mean_score),
            "expected": _finite(t.expected),
            "alpha": t.alpha,
        }
    return {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "source": source,
        "type": EVENT_TYPE,
        "subject": f"{entry.model}:{entry.version}",
        "time": datetime.fromtimestamp(entry.time, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,
    }
