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

Workloads come and go (every CronJob run is a new one, and a tenant can
create cgroups by the thousand), so a baseline not seen for `forget_after`
seconds is dropped, and at most `capacity` are kept: past it, the one seen
least recently goes first, unless it was seen in the same collect (then the
new workload waits, unlearned, for room). A workload that runs is seen every
collect, so churn evicts churn. orb8_table_entries{table="baselines"} shows the fill.

With a state directory, baselines are written atomically (temp file +
rename) and loaded at start, so a restart neither relearns nor resets the
window. The file is read only if it is a regular file (not a symlink,
FIFO, device or directory) of at most MAX_STATE_BYTES: anything else, and a
corrupt, binary or unreadable file, is reported once and learning starts
over; nothing else fails, start-up least of all. A failing save (the
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
import stat
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

STATE_FILE = "baselines.json"
FORMAT_VERSION = 1
# A full table (DEFAULT_CAPACITY workloads x ~60 syscalls) is ~10 MiB of JSON.
MAX_STATE_BYTES = 64 << 20
DEFAULT_CAPACITY = 10_000
DEFAULT_FORGET_AFTER = 7 * 86400.0
SEEN_SAVE_STEP = 3600.0  # how stale a saved last_seen may be


@dataclass
class Baseline:
    first_seen: float  # Unix time
    syscalls: set[str] = field(default_factory=set)
    last_seen: float = 0.0  # Unix time


class Baselines:
    def __init__(
        self,
        window: float,
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        capacity: int = DEFAULT_CAPACITY,
        forget_after: float = DEFAULT_FORGET_AFTER,
    ) -> None:
        self.window = window
        self.clock = clock
        self.capacity = capacity
        self.forget_after = forget_after
        self.path = state_dir / STATE_FILE if state_dir else None
        # Least recently seen first: pruning and eviction take from the front.
        self.workloads: OrderedDict[str, Baseline] = OrderedDict()
        self.evicted = 0  # dropped early because the table was full
        self.refused = 0  # not learned: full of workloads seen in the same collect
        self._dirty = False
        self.save_failing = ""  # the error of the current failed-save episode, if any
        if self.path is not None:
            self._load()

    def _read_state(self) -> bytes | None:
        """The state file's bytes, or None (absent, or not a file to trust: warned)."""
        assert self.path is not None
        try:
            # Never follow a symlink (to /dev/zero, or out of the state dir)
            # and never block on a FIFO; then trust only what fstat says.
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            reason = "a symlink" if os.path.islink(self.path) else e.strerror or str(e)
            log.warning("cannot read baselines %s (%s): learning from scratch", self.path, reason)
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                reason = "not a regular file"
            elif info.st_size > MAX_STATE_BYTES:
                reason = f"{info.st_size} bytes, more than {MAX_STATE_BYTES}"
            else:
                with os.fdopen(fd, "rb") as f:
                    fd = -1
                    raw = f.read(MAX_STATE_BYTES + 1)
                if len(raw) <= MAX_STATE_BYTES:
                    return raw
                reason = f"more than {MAX_STATE_BYTES} bytes"  # grew while read
        except OSError as e:
            reason = e.strerror or str(e)
        finally:
            if fd >= 0:
                os.close(fd)
        log.warning("cannot read baselines %s (%s): learning from scratch", self.path, reason)
        return None

    def _load(self) -> None:
        raw = self._read_state()
        if raw is None:
            return
        now = self.clock()
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("workloads"), dict):
                raise ValueError("not an orb8 baselines object")
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown format version {data.get('version')!r}")
            loaded = [
                # Files from before last_seen count as seen at load.
                (key, Baseline(float(value["first_seen"]), set(value["syscalls"]),
                               float(value.get("last_seen", now))))
                for key, value in data["workloads"].items()
            ]  # fmt: skip
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("baselines file %s is corrupt (%s): learning from scratch", self.path, e)
            return
        loaded.sort(key=lambda item: item[1].last_seen)
        self.workloads = OrderedDict(loaded[-self.capacity :] if self.capacity else [])
        self.prune()
        log.info("loaded syscall baselines of %d workloads from %s", len(self.workloads), self.path)

    def observe(self, workload: str, syscall: str) -> bool:
        """Record that `workload` made `syscall`; True if that call is novel."""
        now = self.clock()
        baseline = self.workloads.get(workload)
        if baseline is None:
            if len(self.workloads) >= self.capacity:
                oldest = next(iter(self.workloads.values()), None)
                if oldest is None or oldest.last_seen >= now:
                    # Every baseline was seen in this very collect: a burst
                    # of new workloads does not evict running ones; this
                    # one is learned once there is room.
                    self.refused += 1
                    return False
                self.workloads.popitem(last=False)
                self.evicted += 1
            baseline = self.workloads[workload] = Baseline(now, last_seen=now)
            self._dirty = True
        elif baseline.last_seen != now:
            if now - baseline.last_seen > SEEN_SAVE_STEP:
                self._dirty = True  # so a restart does not think it long gone
            baseline.last_seen = now
            self.workloads.move_to_end(workload)
        if syscall in baseline.syscalls:
            return False
        if now - baseline.first_seen < self.window:
            baseline.syscalls.add(syscall)
            self._dirty = True
            return False
        return True

    def seen(self, workload: str) -> None:
        """`workload` made calls now (all of them learned ones, which the
        collect does not observe one by one): it is not gone."""
        baseline = self.workloads.get(workload)
        if baseline is None:
            return
        now = self.clock()
        if baseline.last_seen != now:
            if now - baseline.last_seen > SEEN_SAVE_STEP:
                self._dirty = True  # so a restart does not think it long gone
            baseline.last_seen = now
            self.workloads.move_to_end(workload)

    def prune(self) -> int:
        """Drop baselines not seen for `forget_after` seconds; how many went."""
        horizon = self.clock() - self.forget_after
        dropped = 0
        while self.workloads:
            key, baseline = next(iter(self.workloads.items()))
            if baseline.last_seen >= horizon:
                break
            del self.workloads[key]
            dropped += 1
        if dropped:
            self._dirty = True
            log.info("dropped the baselines of %d workloads not seen for %.0f s",
                     dropped, self.forget_after)  # fmt: skip
        return dropped

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
                    key: {
                        "first_seen": b.first_seen,
                        "last_seen": b.last_seen,
                        "syscalls": sorted(b.syscalls),
                    }
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
