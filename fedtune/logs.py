"""Structured logs: one JSON object per line, one line per event (DESIGN.md §5b).

Every record carries ``event`` and, where they apply, ``run``, ``round``, ``site`` and
``phase``, so an operator can ``grep``/``jq`` a federation's history. Libraries call
:func:`log_event`; only the CLI configures handlers.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

_FIELDS = ("run", "round", "site", "phase")


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or record.getMessage(),
        }
        fields = getattr(record, "fields", None) or {}
        for key in _FIELDS:
            if key in fields:
                entry[key] = fields[key]
        for key, value in fields.items():
            if key not in entry:
                entry[key] = value
        if record.getMessage() != entry["event"]:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, sort_keys=False)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with structured fields (``run``, ``round``, ``site``, ``phase``, ...)."""
    logger.log(level, event, extra={"event": event, "fields": fields})


def configure(log_file: Path | None = None, level: int = logging.INFO, stderr: bool = True) -> None:
    """Send ``fedtune`` logs as JSON lines to ``log_file`` and/or standard error."""
    root = logging.getLogger("fedtune")
    root.setLevel(level)
    root.handlers.clear()
    root.propagate = False
    formatter = JsonLineFormatter()
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(formatter)
        root.addHandler(handler)
    if stderr:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        root.addHandler(handler)
