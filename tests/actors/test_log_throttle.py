"""LogThrottle: repeats of one warning are bounded, with a count of what was held back."""

from __future__ import annotations

from gotask.actors._log_throttle import LogThrottle


def test_a_warning_every_100ms_for_a_minute_logs_a_handful_of_lines() -> None:
    throttle = LogThrottle(base_s=1.0, cap_s=60.0)
    logged = [line for i in range(600)
              if (line := throttle.admit(f"lease from storage@owner failed (try {i})", i / 10))]
    assert logged[0] == "lease from storage@owner failed (try 0)"
    assert 5 <= len(logged) <= 8
    assert logged[1].endswith("[9 more like this held back]")
    held = sum(int(line.rsplit("[", 1)[1].split()[0]) for line in logged[1:])
    assert held + len(logged) <= 600


def test_kinds_are_counted_apart_and_a_quiet_kind_starts_over() -> None:
    throttle = LogThrottle(base_s=1.0, cap_s=10.0)
    assert throttle.admit("reaping at s failed: down", 0.0) is not None
    assert throttle.admit("promoting at s failed: down", 0.1) is not None
    assert throttle.admit("reaping at s failed: still down", 0.2) is None
    assert throttle.admit("reaping at s failed: back", 30.0) == "reaping at s failed: back"
