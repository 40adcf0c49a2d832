"""Logging of a `gotask node`: stdlib logging to stderr, as text or as JSON lines.

Rules of this module:
- `setup_logging(level, fmt)` configures the root logger once per process; `fmt` is
  "text" (one human line per record) or "json" (one JSON object per line).
- Fields passed with `extra=` (job id, task, queue, attempt, ...) appear as keys of the
  JSON object; the text format already carries them in its message.
- Nothing here adds job arguments, results or secrets to a record.
- A node logs a line per job event at INFO, so a record must be cheap: the node's
  records carry no caller location, thread or process (no format here shows them; the
  logging HOWTO's "Optimization" switches), and the time text is made once a second.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "JsonFormatter", "setup_logging"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}


class _CachedTime(logging.Formatter):
    """A formatter that renders the seconds of a record's time once per second."""

    _second: tuple[int, str | None, str] = (-1, None, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """`logging.Formatter.formatTime`'s text, its seconds part made once a second."""
        second = int(record.created)
        cached_second, cached_fmt, text = self._second
        if second != cached_second or datefmt != cached_fmt:
            text = time.strftime(datefmt or self.default_time_format, self.converter(second))
            self._second = (second, datefmt, text)
        if datefmt or not self.default_msec_format:
            return text
        return self.default_msec_format % (text, record.msecs)


class JsonFormatter(_CachedTime):
    """One JSON object per record: time, level, logger, message, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as a single line of JSON."""
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send every log record at `level` or above to stderr in format `fmt`."""
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # no caller location: the costliest part of a record
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else _CachedTime(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
