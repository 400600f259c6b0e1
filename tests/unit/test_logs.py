"""Logs: one line per event, no tracebacks for expected faults, no floods, JSON on request."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from exporter.logs import RateLimitFilter
from tests.helpers import ROOT

EMIT = """
import logging, sys
from exporter.logs import setup_logging
setup_logging("info", sys.argv[1])
log = logging.getLogger("orb8.test")
log.warning("a message\\nwith a second line")
try:
    raise OSError(28, "No space left on device")
except OSError:
    log.error("saving failed", exc_info=True)
for i in range(50):
    log.warning("flood %d", i)
logging.getLogger("orb8.evidence").warning('{"evidence": true}')
"""


def emit(fmt: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", EMIT, fmt], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return result.stderr.splitlines()


def test_text_logs_are_one_line_per_event_without_tracebacks_and_floods_are_cut():
    lines = emit("text")
    assert "a message | with a second line" in lines[0]
    assert lines[1].endswith("saving failed (OSError: [Errno 28] No space left on device)")
    assert not any("Traceback" in line for line in lines)
    assert sum("flood" in line for line in lines) == 10  # the rest of the minute is held
    assert lines[-1] == '{"evidence": true}'  # evidence keeps its own format


def test_json_logs_are_one_object_per_line():
    lines = emit("json")
    entries = [json.loads(line) for line in lines]
    assert entries[0]["message"] == "a message\nwith a second line"
    assert entries[0]["level"] == "warning" and entries[0]["logger"] == "orb8.test"
    assert entries[1]["error"] == "OSError: [Errno 28] No space left on device"
    assert "traceback" not in entries[1]
    assert sum("flood" in e.get("message", "") for e in entries) == 10
    assert entries[-1] == {"evidence": True}


def test_rate_limit_reports_what_it_held_back():
    now = [0.0]
    limiter = RateLimitFilter(per_minute=2, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("orb8.x", logging.WARNING, __file__, 1, msg, (), None)

    passed = [limiter.filter(record("same %s")) for _ in range(5)]
    assert passed == [True, True, False, False, False]
    assert limiter.filter(record("other"))  # another template is not affected
    now[0] = 61
    again = record("same %s")
    assert limiter.filter(again) and again.suppressed == 3
