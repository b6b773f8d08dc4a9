"""The caller's W3C trace context (`traceparent`), sent with every call, so a server with tracing on
continues the caller's trace rather than starting one of its own.

No dependency: OpenTelemetry is used only where the caller has imported it, as it must have for a
span to be active; otherwise a call pays one dictionary lookup.
"""

from __future__ import annotations

import sys

__all__ = ["trace_metadata"]


def trace_metadata() -> tuple[tuple[str, str | bytes], ...] | None:
    """The current span's context as gRPC metadata (by the caller's propagators), or None without one."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import propagate, trace

    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items()) or None
