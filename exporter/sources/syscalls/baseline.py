"""Per-workload syscall baselines and the novel syscalls that fall outside them.

A workload is (namespace, owner name or pod name, container) for pods, or
the cgroup path elsewhere, so all replicas of a Deployment share one
baseline. During `window` seconds from the workload's first appearance every
syscall it makes joins its baseline; afterwards a syscall outside the
baseline is novel, and every such call counts in orb8_syscall_novel_total.
Novel calls do not extend the baseline: the series keeps rising while the
behaviour continues, which is what an alert on it should see.

Expected false positives: rare but legitimate code paths first taken after
the window (log rotation, DNS fallbacks, crash handlers, a new release of
the same workload). Lengthen the window, or allowlist the workload.

With a state directory, baselines are written atomically (temp file +
rename) and loaded at start, so a restart neither relearns nor resets the
window. A corrupt, binary or unreadable file is reported once and learning
starts over; nothing else fails, start-up least of all. A failing save (the
path is a directory, the disk is full, the filesystem read-only) is logged
once per episode (until a save succeeds again), never leaves its temporary
file behind, and is retried at the next save; the agent saves on its own
schedule, not in scrapes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

STATE_FILE = "baselines.json"
FORMAT_VERSION = 1


@dataclass
class Baseline:
    first_seen: float  # Unix time
    syscalls: set[str] = field(default_factory=set)


class Baselines:
    def __init__(
        self,
        window: float,
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self.clock = clock
        self.path = state_dir / STATE_FILE if state_dir else None
        self.workloads: dict[str, Baseline] = {}
        self._dirty = False
        self.save_failing = ""  # the error of the current failed-save episode, if any
        if self.path is not None:
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning(
                "cannot read baselines %s (%s): learning from scratch", self.path, e.strerror or e
            )
            return
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("workloads"), dict):
                raise ValueError("not an orb8 baselines object")
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown format version {data.get('version')!r}")
            self.workloads = {
                key: Baseline(float(value["first_seen"]), set(value["syscalls"]))
                for key, value in data["workloads"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("baselines file %s is corrupt (%s): learning from scratch", self.path, e)
            self.workloads = {}
            return
        log.info("loaded syscall baselines of %d workloads from %s", len(self.workloads), self.path)

    def observe(self, workload: str, syscall: str) -> bool:
        """Record that `workload` made `syscall`; True if that call is novel."""
        now = self.clock()
        baseline = self.workloads.get(workload)
        if baseline is None:
            baseline = self.workloads[workload] = Baseline(now)
            self._dirty = True
        if syscall in baseline.syscalls:
            return False
        if now - baseline.first_seen < self.window:
            baseline.syscalls.add(syscall)
            self._dirty = True
            return False
        return True

    def learning(self, workload: str) -> bool:
        baseline = self.workloads.get(workload)
        return baseline is None or self.clock() - baseline.first_seen < self.window

    def save(self, lock: contextlib.AbstractContextManager | None = None) -> None:
        """Write the state file if anything changed; atomic, never partial.

        `lock` guards only the snapshot (collects observe into these
        baselines), not the write and fsync: a slow disk never delays a scrape."""
        with lock if lock is not None else contextlib.nullcontext():
            if self.path is None or not self._dirty:
                return
            data = {
                "version": FORMAT_VERSION,
                "workloads": {
                    key: {"first_seen": b.first_seen, "syscalls": sorted(b.syscalls)}
                    for key, b in self.workloads.items()
                },
            }
            self._dirty = False  # a change during the write sets it again
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".baselines-")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            tmp = None
        except OSError as e:
            self._dirty = True
            error = e.strerror or str(e)
            if not self.save_failing:
                log.warning(
                    "cannot save baselines to %s: %s; learning goes on in memory, retrying "
                    "quietly until a save succeeds",
                    self.path,
                    error,
                )
            self.save_failing = error
            return
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        if self.save_failing:
            log.info("baselines saved to %s again", self.path)
            self.save_failing = ""
