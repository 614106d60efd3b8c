"""The node agent's log: one JSON object a line (time, level, logger, message, and the traceback as
`exception` when there is one), so tools read it line by line without guessing where a record ends.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import datetime, timezone
from typing import TextIO


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # json.dumps escapes newlines inside strings, so a multi-line message stays one line.
        return json.dumps(entry, default=str)


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Send every log record of this process as JSON lines to `stream` (stderr by default), and turn
    what Python would otherwise print as plain text there (warnings, uncaught exceptions in any
    thread) into records too, so the whole file parses."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    crashes = logging.getLogger("rectrain.node.crash")

    def thread_died(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread else "?"
        crashes.error("uncaught exception in thread %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    def process_died(exc_type, exc_value, traceback) -> None:
        crashes.critical("uncaught exception", exc_info=(exc_type, exc_value, traceback))

    threading.excepthook = thread_died
    sys.excepthook = process_died
