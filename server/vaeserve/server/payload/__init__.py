"""Payload logging for drift and audit: sampled Score requests as CloudEvents JSON lines (docs/payload-logging.md)."""

from vaeserve.server.payload.log import PayloadLog, open_payload_log
from vaeserve.server.payload.record import EVENT_TYPE, InputPolicy, input_hashes

__all__ = ["EVENT_TYPE", "InputPolicy", "PayloadLog", "input_hashes", "open_payload_log"]
