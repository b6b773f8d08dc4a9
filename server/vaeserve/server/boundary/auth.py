"""Bearer-token authentication at the request boundary, shared by gRPC and HTTP.

Callers send ``authorization: Bearer <token>`` (gRPC metadata or an HTTP header). Tokens come
from files, one per line (blank lines and ``#`` comments skipped), so they can be mounted as
secrets; admin tokens may also call the methods that change what is served (LoadModel,
UnloadModel). Every known token is compared in constant time, whatever matches first, so the
time taken says nothing about a token. Tokens never appear in logs or error messages.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path

from vaeserve.server.errors import PermissionDenied, Unauthenticated

__all__ = ["ADMIN_METHODS", "Authenticator", "read_tokens"]

ADMIN_METHODS = frozenset({"LoadModel", "UnloadModel"})
_SCHEME = "bearer "


def read_tokens(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read tokens ({exc})") from exc
    tokens = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise ValueError(f"{path}: holds no tokens (one per line)")
    return tokens


class Authenticator:
    """Checks a call's bearer token: any known token for ordinary calls, an admin token for ADMIN_METHODS."""

    def __init__(self, tokens: Iterable[str], admin_tokens: Iterable[str] = (), *, guard_health: bool = False) -> None:
        self._admin = [t.encode() for t in admin_tokens]
        self._plain = [t.encode() for t in tokens] + self._admin
        self.guard_health = guard_health  # health checks and reflection need a token too

    def check(self, authorization: str | None, method: str) -> None:
        if not authorization or not authorization[: len(_SCHEME)].lower() == _SCHEME:
            raise Unauthenticated("this server needs a bearer token: authorization metadata 'Bearer <token>'")
        given = authorization[len(_SCHEME) :].strip().encode()
        if not _known(given, self._plain):
            raise Unauthenticated("the bearer token is not one this server accepts")
        if method in ADMIN_METHODS and not _known(given, self._admin):
            raise PermissionDenied(f"{method} needs an admin token (--admin-tokens); this token may not change models")


def _known(given: bytes, tokens: list[bytes]) -> bool:
    found = False
    for token in tokens:  # no early exit: the time does not depend on which token matched
        found |= hmac.compare_digest(given, token)
    return found
