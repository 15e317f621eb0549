"""Structured logs: one JSON object a line on stderr (systemd puts stderr in the journal)."""
from __future__ import annotations

import json
import logging
import sys

from drivers.clock import Clock, iso_utc


class JsonFormatter(logging.Formatter):
    """Timestamps come from the injected clock, so simulated runs log simulated time."""

    def __init__(self, clock: Clock | None = None) -> None:
        super().__init__()
        self.clock = clock

    def format(self, record: logging.LogRecord) -> str:
        doc = {"level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        if self.clock is not None:
            doc["utc"] = iso_utc(self.clock.utc_ns(), digits=3)
            doc["mono_ns"] = self.clock.monotonic_ns()
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, sort_keys=True, default=str)


def setup(level: str = "info", clock: Clock | None = None, stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(clock))
    root = logging.getLogger("bwv")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields) -> None:
    logger.log(level, msg, extra={"fields": fields})
