"""The request guard, in-process: ids, token checks, admission, refusals, release, the log line and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
import pytest

from tests.bundles import LinearGaussian
from tests.serving import RunningServer
from vaeserve.api import codec
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc
from vaeserve.server.boundary.auth import Authenticator
from vaeserve.server.boundary.guard import Guard
from vaeserve.server.boundary.metrics import Metrics
from vaeserve.server.errors import InvalidArgument

Code = grpc.StatusCode


class Answered(Exception):
    """Stands in for grpc.aio.AbortError: the handler answered the call itself."""


def requests(metrics: Metrics, method: str, code: str, protocol: str = "v1") -> float:
    labels = {"protocol": protocol, "method": method, "code": code, "model": "", "version": ""}
    return metrics.registry.get_sample_value("vaeserve_requests_total", labels) or 0.0


def test_an_admitted_call_runs_and_gives_its_place_back() -> None:
    metrics = Metrics()
    guard = Guard(max_in_flight=2, metrics=metrics)
    with guard.request("v1", "Score", request_id="abc", in_bytes=10) as info:
        assert info.refusal is None and info.request_id == "abc"
        assert guard.in_flight == 1 and guard.bytes_in_flight == 10
        info.model, info.version = "digits", "3"
    assert guard.in_flight == 0 and guard.bytes_in_flight == 0
    labels = {"protocol": "v1", "method": "Score", "code": "OK", "model": "digits", "version": "3"}
    assert metrics.registry.get_sample_value("vaeserve_requests_total", labels) == 1.0
    assert metrics.registry.get_sample_value("vaeserve_requests_in_flight") == 0.0


def test_a_full_server_refuses_at_once_and_admits_again_once_calls_drain() -> None:
    metrics = Metrics()
    guard = Guard(max_in_flight=2, metrics=metrics)
    with contextlib.ExitStack() as running:
        for _ in range(2):
            assert running.enter_context(guard.request("v1", "Score")).refusal is None
        assert metrics.registry.get_sample_value("vaeserve_requests_in_flight") == 2.0
        ran = False
        with guard.request("v2-http", "ModelInfer") as refused:
            ran = refused.refusal is None
        assert not ran and guard.in_flight == 2  # a refused call holds nothing
        assert refused.refusal is not None and refused.refusal.code is Code.RESOURCE_EXHAUSTED
        assert refused.refusal.http_status == 429
        assert refused.refusal.message == "server busy: 2 requests in flight (max_in_flight 2); retry with backoff"
    assert guard.in_flight == 0
    with guard.request("v1", "Score") as info:
        assert info.refusal is None
    assert requests(metrics, "ModelInfer", "RESOURCE_EXHAUSTED", "v2-http") == 1.0
    assert requests(metrics, "Score", "OK") == 3.0


def test_admission_counts_every_protocol_together() -> None:
    guard = Guard(max_in_flight=1)
    with guard.request("v1", "Score"), guard.request("v2", "ModelInfer") as second:
        assert second.refusal is not None and second.refusal.code is Code.RESOURCE_EXHAUSTED


def test_an_error_in_the_call_is_released_mapped_and_kept_from_propagating() -> None:
    metrics = Metrics()
    guard = Guard(max_in_flight=1, metrics=metrics, max_bytes_in_flight=100)
    with guard.request("v1", "Encode", in_bytes=40) as info:
        raise InvalidArgument("x has shape (2, 7); this model takes (B, 64)")
    assert guard.in_flight == 0 and guard.bytes_in_flight == 0
    assert info.refusal is not None and info.refusal.code is Code.INVALID_ARGUMENT
    assert info.refusal.message == "x has shape (2, 7); this model takes (B, 64)"
    assert requests(metrics, "Encode", "INVALID_ARGUMENT") == 1.0


def test_a_bug_is_logged_with_its_traceback_and_answered_internal(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard(max_in_flight=1, log_requests=False)
    with caplog.at_level(logging.ERROR, "vaeserve.server.boundary"), guard.request("v1", "Score") as info:
        raise KeyError("log_px")
    assert info.refusal is not None and info.refusal.is_bug
    assert "KeyError" in info.refusal.message and "log_px" not in info.refusal.message
    [record] = caplog.records
    assert record.exc_info is not None and f"request {info.request_id}" in record.getMessage()


def test_a_cancelled_call_is_released_counted_and_goes_on_up() -> None:
    metrics = Metrics()
    guard = Guard(max_in_flight=1, metrics=metrics)
    with pytest.raises(asyncio.CancelledError), guard.request("v1", "Score"):
        raise asyncio.CancelledError
    assert guard.in_flight == 0 and requests(metrics, "Score", "CANCELLED") == 1.0


def test_a_call_the_handler_answered_itself_is_counted_aborted_and_goes_on_up() -> None:
    metrics = Metrics()
    guard = Guard(max_in_flight=1, metrics=metrics)
    with pytest.raises(Answered), guard.request("v1", "Score", answered=(Answered,)) as info:
        raise Answered
    assert info.refusal is None and guard.in_flight == 0
    assert requests(metrics, "Score", "ABORTED") == 1.0


def test_bytes_in_flight_are_bounded_but_one_request_alone_always_goes_through() -> None:
    mb = 2**20
    guard = Guard(max_in_flight=10, max_bytes_in_flight=1 * mb)
    with guard.request("v1", "Score", in_bytes=3 * mb) as alone:
        assert alone.refusal is None
        with guard.request("v1", "Score", in_bytes=10) as second:
            assert second.refusal is not None and second.refusal.code is Code.RESOURCE_EXHAUSTED
            assert "3 MB of requests in progress" in second.refusal.message
            assert "max_request_mb_in_flight 1" in second.refusal.message
        assert guard.in_flight == 1 and guard.bytes_in_flight == 3 * mb
        with guard.request("v1", "ScoreStream", hold=False) as stream:  # its size is not known up front
            assert stream.refusal is None and guard.bytes_in_flight == 3 * mb
    assert guard.in_flight == 0 and guard.bytes_in_flight == 0


def test_request_ids_are_given_or_made_unique() -> None:
    guard = Guard(max_in_flight=5)
    made = set()
    for _ in range(3):
        with guard.request("v1", "Score") as info:
            made.add(info.request_id)
    assert len(made) == 3
    with guard.request("v1", "Score", request_id="x" * 100) as given:
        assert given.request_id == "x" * 64  # a client's id is kept, but not without bound


def test_a_handler_finds_its_call_by_key_only_while_it_runs() -> None:
    guard, key = Guard(max_in_flight=1), object()
    with guard.request("v1", "Score", key=key) as info:
        assert guard.request_of(key) is info
    with pytest.raises(KeyError):
        guard.request_of(key)
    refused = guard.request("v1", "Score", key=key)  # entered while the server is full: never open
    with guard.request("v1", "Score"), refused, pytest.raises(KeyError):
        guard.request_of(key)


def test_tokens_are_checked_before_admission() -> None:
    auth = Authenticator(["user-token"], ["admin-token"])
    metrics = Metrics()
    guard = Guard(max_in_flight=1, metrics=metrics, auth=auth)
    with guard.request("v1", "Score") as missing:
        pass
    assert missing.refusal is not None and missing.refusal.code is Code.UNAUTHENTICATED
    assert missing.refusal.http_status == 401 and "bearer token" in missing.refusal.message
    with guard.request("v1", "Score", authorization="Bearer wrong") as wrong:
        pass
    assert wrong.refusal is not None and wrong.refusal.message == "the bearer token is not one this server accepts"
    with guard.request("v1", "LoadModel", authorization="Bearer user-token") as plain:
        pass
    assert plain.refusal is not None and plain.refusal.code is Code.PERMISSION_DENIED
    with guard.request("v1", "LoadModel", authorization="bearer admin-token") as admin:
        assert admin.refusal is None
    assert guard.in_flight == 0 and requests(metrics, "Score", "UNAUTHENTICATED") == 2.0


def test_health_checks_need_no_token_unless_guarded() -> None:
    open_health = Guard(max_in_flight=1, auth=Authenticator(["t"]))
    with open_health.request("v2", "ServerReady") as ready:
        assert ready.refusal is None
    assert open_health.authorize("Check", None) is not None  # only the V2 probes are exempt by name
    guarded = Guard(max_in_flight=1, auth=Authenticator(["t"], guard_health=True))
    refusal = guarded.authorize("ServerLive", None)
    assert refusal is not None and refusal.code is Code.UNAUTHENTICATED
    assert guarded.authorize("Check", "Bearer t") is None
    assert Guard(max_in_flight=1).authorize("Score", None) is None  # no tokens configured: all open


def test_one_log_line_per_call(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard(max_in_flight=1)
    with caplog.at_level(logging.INFO, "vaeserve.requests"), guard.request("v2", "ModelInfer", in_bytes=7) as info:
        info.model, info.version, info.out_bytes = "digits", "1", 9
    [line] = [r.getMessage() for r in caplog.records if r.name == "vaeserve.requests"]
    assert f"protocol=v2 method=ModelInfer id={info.request_id} model=digits:1 status=OK" in line
    assert "in_bytes=7 out_bytes=9" in line


def test_replies_carry_the_id_the_guard_gave_their_call(worse_server: RunningServer, lg: LinearGaussian) -> None:
    """End to end: the servicer takes its call from the guard and hands the id on to every reply's header."""
    x = codec.to_proto(lg.sample(2, seed=3))
    with grpc.insecure_channel(worse_server.address) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        reply, call = stub.Score.with_call(pb.ScoreRequest(x=x, k=4), metadata=(("x-request-id", "given-1"),))
        assert reply.header.request_id == "given-1" and reply.header.model_name
        encoded, call = stub.Encode.with_call(pb.EncodeRequest(x=x))
        assert encoded.header.request_id == dict(call.trailing_metadata())["x-request-id"] != "given-1"
        stream = stub.ScoreStream(iter([pb.ScoreRequest(x=x, k=4)] * 3), metadata=(("x-request-id", "stream-2"),))
        assert [r.header.request_id for r in stream] == ["stream-2"] * 3
