"""vaeserve.client: a typed Python client for vaeserve (numpy in, numpy out) and the `vaeserve` command line.

    from vaeserve.client import Client

    with Client("localhost:50051") as client:
        info = client.info()
        scores = client.score(images)           # per input: ELBO, log p(x) +- se, ESS, anomaly p-value and flag
        client.load_model("digits")             # a model repository's new versions in, old ones out

Errors are raised as `VaeServeError` subclasses that keep the server's status code and message.
"""

from vaeserve.client._aio import AsyncClient
from vaeserve.client._channel import TlsConfig
from vaeserve.client._client import Client
from vaeserve.client._errors import (
    AuthenticationError,
    CancelledError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    ServerError,
    UnavailableError,
    VaeServeError,
)
from vaeserve.client._results import (
    AnomalyScores,
    Decoded,
    Encoded,
    InputScore,
    ModelInfo,
    ModelStatus,
    Sampled,
    Scores,
    ServedBy,
    Typicality,
)

__all__ = [
    "AnomalyScores",
    "AsyncClient",
    "AuthenticationError",
    "CancelledError",
    "Client",
    "DeadlineExceededError",
    "Decoded",
    "Encoded",
    "InputScore",
    "InvalidArgumentError",
    "ModelInfo",
    "ModelStatus",
    "NotFoundError",
    "ResourceExhaustedError",
    "Sampled",
    "Scores",
    "ServedBy",
    "ServerError",
    "TlsConfig",
    "Typicality",
    "UnavailableError",
    "VaeServeError",
]
