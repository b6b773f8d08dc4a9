"""The score columns are declared once: the table and the ScoreResponse message agree field by field."""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from vaeserve.api.scores import ANOMALY_FIELDS, ANOMALY_SCORES, SCORE_COLUMNS, anomaly_column, columns_of
from vaeserve.api.v1 import vae_pb2 as pb

# Per-input tensors of ScoreResponse that are not [B] columns: per-dimension maps.
NOT_COLUMNS = {("per_dim",), ("reconstruction",)}


def _tensor_paths(message: Descriptor, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths: set[tuple[str, ...]] = set()
    for field in message.fields:
        if field.type != FieldDescriptor.TYPE_MESSAGE or field.is_repeated:
            continue
        if field.message_type is pb.Tensor.DESCRIPTOR:
            paths.add((*prefix, field.name))
        elif field.message_type is not pb.ReplyHeader.DESCRIPTOR:
            paths |= _tensor_paths(field.message_type, (*prefix, field.name))
    return paths


def test_every_tensor_of_the_reply_is_a_declared_column_and_back() -> None:
    declared = {c.path for c in SCORE_COLUMNS}
    assert declared == _tensor_paths(pb.ScoreResponse.DESCRIPTOR) - NOT_COLUMNS
    assert len({c.name for c in SCORE_COLUMNS}) == len(SCORE_COLUMNS)


def test_groups() -> None:
    assert [c.name for c in columns_of("prior")] == ["prior_log_px", "prior_log_px_se", "prior_ess"]
    assert {c.name for c in columns_of("anomaly")} == {"anomaly_score", "percentile", "p_value", "is_anomaly"}
    assert [c.name for c in columns_of("adaptive")] == ["k_used"]
    assert {c.dtype for c in SCORE_COLUMNS} == {"float64", "bool", "int64"}
    assert [c.name for c in SCORE_COLUMNS if c.dtype == "bool"] == ["unreliable", "is_anomaly"]


def test_anomaly_fields_are_the_tensors_of_an_anomaly_entry() -> None:
    """Every named score travels as an Anomaly message; its per-input tensors are the declared fields."""
    assert {(f.name,) for f in ANOMALY_FIELDS} == _tensor_paths(pb.Anomaly.DESCRIPTOR)
    # The default score's columns are the same fields of ScoreResponse.anomaly.
    assert {c.path[-1] for c in columns_of("anomaly")} == {f.name for f in ANOMALY_FIELDS}
    names = [s.name for s in ANOMALY_SCORES]
    assert names[0] == "nll" and len(set(names)) == len(names)
    assert anomaly_column("reconstruction", "p_value") == "reconstruction_p_value"
    columns = {c.name for c in SCORE_COLUMNS}
    assert not columns & {anomaly_column(s, f.name) for s in names for f in ANOMALY_FIELDS}
