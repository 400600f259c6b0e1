"""Evidence for dangerous syscalls: ring buffer records -> one JSON log line each.

What an on-call person reads after an alert: which workload made which
dangerous syscall, as whom, from which process. Lines go to the
`orb8.evidence` logger as bare JSON (one object per line, easy to ship and
query). A flood cannot fill disks: each (workload, syscall) gets at most
`per_minute` lines a minute (token bucket); what was held back is summarised
in the next line that gets through as `"suppressed": N`. The bucket table is
bounded (least recently used keys are forgotten first).

Before that, the kernel limits records per cgroup (bpf/syscalls.c); a record
says how many of its cgroup's dangerous calls (any syscall) got no record
since the cgroup's previous one, shown as `"rate_limited": N` and
`"rate_limited_since"` (carried to the next line of the same key when this
record's line is held back here).
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exporter.model import Identity

log = logging.getLogger("orb8.evidence")

EVENT_OVERFLOW = 1  # dangerous_event.flags (bpf/include/syscalls.h)

MAX_RATE_KEYS = 10_000


class Allowlist:
    """namespace/pod/container globs, or cgroup:<path glob> for non-pod cgroups."""

    def __init__(self, selectors: tuple[str, ...]) -> None:
        self.pod_rules = [tuple(s.split("/")) for s in selectors if not s.startswith("cgroup:")]
        self.cgroup_rules = [s[len("cgroup:") :] for s in selectors if s.startswith("cgroup:")]

    def allows(self, identity: Identity) -> bool:
        if identity.pod:
            return any(
                fnmatch.fnmatchcase(identity.namespace, ns)
                and fnmatch.fnmatchcase(identity.pod, pod)
                and fnmatch.fnmatchcase(identity.container, container)
                for ns, pod, container in self.pod_rules
            )
        return any(fnmatch.fnmatchcase(identity.cgroup, rule) for rule in self.cgroup_rules)


@dataclass
class _Bucket:
    tokens: float
    updated: float
    suppressed: int = 0
    rate_limited: int = 0  # the kernel's counts of records held back here
    rate_limited_since: int = 0  # CLOCK_MONOTONIC ns, the earliest of those


class RateLimiter:
    """Token bucket per key: `per_minute` lines a minute, bursts up to the same."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.buckets: OrderedDict[tuple, _Bucket] = OrderedDict()

    def admit(self, key: tuple) -> tuple[bool, int]:
        """(may log now, lines suppressed since the last one that was logged)."""
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = _Bucket(float(self.per_minute), now)
            if len(self.buckets) > MAX_RATE_KEYS:
                self.buckets.popitem(last=False)
        self.buckets.move_to_end(key)
        bucket.tokens = min(
            float(self.per_minute), bucket.tokens + (now - bucket.updated) * self.per_minute / 60
        )
        bucket.updated = now
        if bucket.tokens < 1:
            bucket.suppressed += 1
            return False, 0
        bucket.tokens -= 1
        suppressed, bucket.suppressed = bucket.suppressed, 0
        return True, suppressed

    def rate_limited(
        self, key: tuple, count: int, since_ns: int, admitted: bool
    ) -> tuple[int, int]:
        """The kernel's count of unrecorded calls a record carries: kept for
        the key's next line if this one is held back; else (count with what
        was kept, the earliest since)."""
        bucket = self.buckets.get(key)
        if bucket is None:
            return (count, since_ns) if admitted else (0, 0)
        if count and (not bucket.rate_limited or since_ns < bucket.rate_limited_since):
            bucket.rate_limited_since = since_ns
        bucket.rate_limited += count
        if not admitted:
            return 0, 0
        total, since = bucket.rate_limited, bucket.rate_limited_since
        bucket.rate_limited = bucket.rate_limited_since = 0
        return total, since


def evidence_line(
    event: Any,  # a struct dangerous_event (bpf/include/syscalls.h), as BCC decodes it
    identity: Identity,
    syscall: str,
    suppressed: int,
    boot_offset: float,
    abi: str = "native",
    rate_limited: tuple[int, int] = (0, 0),
) -> str:
    """rate_limited: (calls of the cgroup the kernel gave no record, since
    when in CLOCK_MONOTONIC ns; 0 if it does not remember)."""
    record = {
        "time": datetime.datetime.fromtimestamp(
            boot_offset + event.time_ns / 1e9, tz=datetime.timezone.utc
        ).isoformat(timespec="milliseconds"),
        "msg": "dangerous syscall",
        "syscall": syscall,
        "abi": abi,
        "namespace": identity.namespace,
        "pod": identity.pod,
        "container": identity.container,
        "cgroup": identity.cgroup,
        # The kernel's id: the cgroup of a line whose path was not known yet
        # (a record that waited for a walk the cgroup did not outlive).
        "cgroup_id": event.cgroup_id,
        "pid": event.tgid,
        "tid": event.pid,
        "uid": event.uid,
        "comm": event.comm.decode(errors="replace"),
    }
    if suppressed:
        record["suppressed"] = suppressed
    count, since_ns = rate_limited
    if count:
        record["rate_limited"] = count
        if since_ns:
            record["rate_limited_since"] = _iso(boot_offset + since_ns / 1e9)
    if event.flags & EVENT_OVERFLOW:
        # dangerous_counts was full: this call is in the cgroup="<overflow>" series.
        record["counted_as"] = "<overflow>"
    return json.dumps(record, separators=(",", ":"))


def _iso(unix_time: float) -> str:
    return datetime.datetime.fromtimestamp(unix_time, tz=datetime.timezone.utc).isoformat(
        timespec="milliseconds"
    )


def monotonic_to_wall_offset() -> float:
    """Add to CLOCK_MONOTONIC seconds (bpf_ktime_get_ns) to get Unix time."""
    return time.time() - time.monotonic()
