"""The node's log formatters: the cached time text equals stdlib logging's."""

from __future__ import annotations

import logging

from gotask._logging import JsonFormatter, _CachedTime


def _record(created: float) -> logging.LogRecord:
    record = logging.LogRecord("gotask.jobs", logging.INFO, "", 0, "job x started", (), None)
    record.created, record.msecs = created, (created - int(created)) * 1000
    return record


def test_cached_time_text_equals_stdlib_across_seconds_and_formats() -> None:
    cached, stdlib = _CachedTime(), logging.Formatter()
    # Within one second, across a second, back to an earlier second, and with a datefmt.
    for created in (1_700_000_000.001, 1_700_000_000.999, 1_700_000_001.5, 1_700_000_000.25):
        record = _record(created)
        assert cached.formatTime(record) == stdlib.formatTime(record)
        assert cached.formatTime(record, "%H:%M:%S") == stdlib.formatTime(record, "%H:%M:%S")
        assert cached.formatTime(record) == stdlib.formatTime(record)


def test_json_time_keeps_its_milliseconds() -> None:
    line = JsonFormatter().format(_record(1_700_000_000.25))
    expected = logging.Formatter().formatTime(_record(1_700_000_000.25), "%Y-%m-%dT%H:%M:%S")
    assert f'"time": "{expected}.250"' in line
