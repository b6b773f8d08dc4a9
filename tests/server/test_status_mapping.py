"""The one status table: each domain error to its gRPC status code and HTTP status, a bug to INTERNAL."""

from __future__ import annotations

import grpc
import pytest

from vaeserve.api.codec import TensorError
from vaeserve.server import errors
from vaeserve.server.boundary.status import HTTP_STATUS, Refusal, refusal_of

Code = grpc.StatusCode


@pytest.mark.parametrize(
    ("error", "code", "http"),
    [
        (errors.InvalidArgument, Code.INVALID_ARGUMENT, 400),
        (TensorError, Code.INVALID_ARGUMENT, 400),
        (errors.LimitExceeded, Code.RESOURCE_EXHAUSTED, 429),
        (errors.ModelNotFound, Code.NOT_FOUND, 404),
        (errors.NotReady, Code.UNAVAILABLE, 503),
        (errors.DeadlineExceeded, Code.DEADLINE_EXCEEDED, 504),
        (errors.Cancelled, Code.CANCELLED, 499),
        (errors.Unauthenticated, Code.UNAUTHENTICATED, 401),
        (errors.PermissionDenied, Code.PERMISSION_DENIED, 403),
        (errors.FailedPrecondition, Code.FAILED_PRECONDITION, 500),  # model control: no HTTP route has it
    ],
)
def test_each_domain_error_has_its_code_and_keeps_its_message(error: type[Exception], code: Code, http: int) -> None:
    refusal = refusal_of(error("x has shape (2, 7); this model takes (B, 64)"))
    assert refusal == Refusal(code, "x has shape (2, 7); this model takes (B, 64)")
    assert refusal.http_status == http
    assert not refusal.is_bug


def test_every_serving_error_is_mapped() -> None:
    """A new ServingError subclass must get a code here, or it would be answered INTERNAL as a bug."""
    kinds = [getattr(errors, name) for name in errors.__all__ if name != "ServingError"]
    for kind in kinds:
        assert refusal_of(kind("why")).code is not Code.INTERNAL, kind.__name__


@pytest.mark.parametrize("bug", [ValueError("secret path /etc/x"), KeyError("k"), RuntimeError(), ZeroDivisionError()])
def test_anything_else_is_internal_and_its_message_stays_in_the_server(bug: Exception) -> None:
    refusal = refusal_of(bug)
    assert refusal.code is Code.INTERNAL and refusal.is_bug and refusal.http_status == 500
    assert refusal.message == f"internal error ({type(bug).__name__}); see the server log"
    assert "secret" not in refusal.message


def test_a_subclass_maps_like_its_parent() -> None:
    class TooManyInputs(errors.LimitExceeded):
        pass

    assert refusal_of(TooManyInputs("over max_batch")).code is Code.RESOURCE_EXHAUSTED


def test_http_statuses_are_client_or_server_errors() -> None:
    assert all(400 <= status < 600 for status in HTTP_STATUS.values())
    assert Code.OK not in HTTP_STATUS and Code.INTERNAL not in HTTP_STATUS
