"""The client's Scores against the one score-column table (vaeserve.api.scores), without a server."""

from __future__ import annotations

import typing
from dataclasses import fields

import numpy as np

from vaeserve.api import codec
from vaeserve.api.scores import SCORE_COLUMNS
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.client import Scores
from vaeserve.client import _convert as cv


def _reply(groups: set[str], b: int = 3) -> pb.ScoreResponse:
    """A ScoreResponse with every column of `groups`, column i holding i, i + 1, ... (True/False for bool)."""
    reply = pb.ScoreResponse(k=7, seed=11)
    for i, column in enumerate(SCORE_COLUMNS):
        if column.group not in groups:
            continue
        values = np.arange(i, i + b) % 2 == 0 if column.dtype == "bool" else np.arange(i, i + b, dtype=column.dtype)
        *parents, leaf = column.path
        message = reply
        for part in parents:
            message = getattr(message, part)
        getattr(message, leaf).CopyFrom(codec.to_proto(values))
    return reply


def test_every_column_is_a_typed_field_of_scores() -> None:
    hints = typing.get_type_hints(Scores)
    names = [f.name for f in fields(Scores)]
    for column in SCORE_COLUMNS:
        assert column.name in names, f"{column.name} is in SCORE_COLUMNS but not a field of Scores"
        # Only the estimate columns are in every reply; the others are None when not asked for.
        optional = column.group != "estimate"
        assert hints[column.name] == (np.ndarray | None if optional else np.ndarray), column.name


def test_columns_follow_the_table() -> None:
    scores = cv.scores(_reply({"estimate", "prior", "anomaly", "adaptive", "ensemble"}))
    assert list(scores.columns()) == [c.name for c in SCORE_COLUMNS]
    for i, column in enumerate(SCORE_COLUMNS):
        value = getattr(scores, column.name)
        assert value.dtype == np.dtype(column.dtype) and len(value) == 3
        if column.dtype != "bool":
            np.testing.assert_array_equal(value, [i, i + 1, i + 2])
    assert (scores.k, scores.seed) == (7, 11)


def test_absent_groups_are_none() -> None:
    scores = cv.scores(_reply({"estimate"}))
    absent = {c.name for c in SCORE_COLUMNS if c.group != "estimate"}
    assert all(getattr(scores, name) is None for name in absent)
    assert list(scores.columns()) == [c.name for c in SCORE_COLUMNS if c.group == "estimate"]
    assert scores.threshold is None and scores.anomaly_k is None and scores.per_dim is None
    one = scores[1]
    assert one.log_px == float(scores.log_px[1]) and one.anomaly_score is None and one.is_anomaly is None
    with_anomaly = cv.scores(_reply({"estimate", "anomaly"}))
    assert with_anomaly.prior_log_px is None and with_anomaly.is_anomaly is not None
    assert with_anomaly.threshold == 0.0 and with_anomaly.anomaly_k == 0  # present, left at proto defaults


def test_model_statuses() -> None:
    models = [
        pb.ModelStatus(name="lg", version="2", state=pb.MODEL_STATE_READY, path="/m/lg/2", in_flight=3),
        pb.ModelStatus(name="lg", version="1", state=pb.MODEL_STATE_FAILED, reason="bad manifest"),
        pb.ModelStatus(name="lg", version="0", state=pb.MODEL_STATE_UNSPECIFIED),
    ]
    statuses = cv.model_statuses(models)
    assert [(s.version, s.state, s.in_flight) for s in statuses] == [
        ("2", "READY", 3),
        ("1", "FAILED", 0),
        ("0", "UNKNOWN (0)", 0),
    ]
    assert statuses[0].path == "/m/lg/2" and statuses[1].reason == "bad manifest"
