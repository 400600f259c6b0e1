"""Evidence for dangerous syscalls: ring buffer records -> one JSON log line each.

What an on-call person reads after an alert: which workload made which
dangerous syscall, as whom, from which process. Lines go to the
`orb8.evidence` logger as bare JSON (one object per line, easy to ship and
query). A flood cannot fill disks: each (workload, syscall) gets at most
`per_minute` lines a minute (token bucket); what was held back is summarised
in the next line that gets through as `"suppressed": N`. The bucket table is
bounded (least recently used keys are forgotten first).
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


def evidence_line(
    event: Any,  # a struct dangerous_event (bpf/include/syscalls.h), as BCC decodes it
    identity: Identity,
    syscall: str,
    suppressed: int,
    boot_offset: float,
    abi: str = "native",
) -> str:
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
    return json.dumps(record, separators=(",", ":"))


def monotonic_to_wall_offset() -> float:
    """Add to CLOCK_MONOTONIC seconds (bpf_ktime_get_ns) to get Unix time."""
    return time.time() - time.monotonic()
