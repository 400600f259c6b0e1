"""Logs, the operator's interface: one line per event, no floods, text or JSON.

  - every record is one line: newlines in messages are folded, and an
    exception attached to a record is summarised as "(Type: message)"; the
    traceback itself is only written at --log-level debug;
  - a message template (logger + format string) that repeats more than
    `per_minute` times a minute is held back for the rest of that minute, and
    the next line of it says how many were suppressed;
  - `--log-format json` writes one JSON object per line (time, level,
    logger, message, and `error`/`suppressed` when set) for log pipelines.
Evidence lines (logger orb8.evidence) are JSON objects already and keep
their own per-workload rate limit; they bypass all of this.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


class RateLimitFilter(logging.Filter):
    """At most `per_minute` records per (logger, template) a minute; then one
    summary count on the next record that gets through."""

    def __init__(self, per_minute: int = 10, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.per_minute = per_minute
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], list[float]] = {}  # key -> [start, count, held]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= 60:
                held = int(window[2]) if window else 0
                self._windows[key] = [now, 1, 0]
                if len(self._windows) > 10_000:  # templates are finite; this is a guard
                    self._windows = {key: self._windows[key]}
                if held:
                    record.suppressed = held
                return True
            if window[1] < self.per_minute:
                window[1] += 1
                return True
            window[2] += 1
            return False


class OneLineFormatter(logging.Formatter):
    def __init__(self, debug: bool) -> None:
        super().__init__(TEXT_FORMAT)
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        message = _one_line(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            message += f" ({type(error).__name__}: {_one_line(str(error))})"
        held = getattr(record, "suppressed", 0)
        if held:
            message += f" [{held} similar messages suppressed in the last minute]"
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {message}"
        if self.debug and record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            entry["error"] = f"{type(error).__name__}: {error}"
            if self.debug:
                entry["traceback"] = self.formatException(record.exc_info)
        held = getattr(record, "suppressed", 0)
        if held:
            entry["suppressed"] = held
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text", per_minute: int = 10) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    debug = level.lower() == "debug"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(debug) if fmt == "json" else OneLineFormatter(debug))
    handler.addFilter(RateLimitFilter(per_minute))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # Evidence lines are bare JSON objects, one per line, for log shippers.
    evidence = logging.getLogger("orb8.evidence")
    for old in list(evidence.handlers):
        evidence.removeHandler(old)
    evidence_handler = logging.StreamHandler(sys.stderr)
    evidence_handler.setFormatter(logging.Formatter("%(message)s"))
    evidence.addHandler(evidence_handler)
    evidence.propagate = False
