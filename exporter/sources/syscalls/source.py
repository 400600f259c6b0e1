"""Syscalls per cgroup, counted exactly in the kernel; dangerous ones also as evidence.

Hooks: raw tracepoint sys_enter (classic raw_syscalls:sys_enter as fallback)
counts; sched_switch and cgroup_attach_task keep the per-CPU cgroup id cache
honest (see bpf/syscalls.c). Program bpf/syscalls.c.

Metrics: orb8_syscalls_total{namespace,pod,container,cgroup,syscall};
orb8_dangerous_syscalls_total{...,syscall} (attempts, exact, orb8 itself and
allowlisted workloads excluded); orb8_syscall_novel_total{...,syscall}
(outside the workload's learned baseline, see baseline.py);
orb8_ring_buffer_{events,drops,sampled}_total, _utilization, _size_bytes
for probe="syscalls"; orb8_bpf_map_entries / _capacity / _update_failures_total
for map="syscall_slots" and map="dangerous_counts". Each dangerous call is
also one JSON evidence line (evidence.py).

Overhead: no helper call and three inlined array lookups per syscall on the
hot path, plus one array store per context switch (see bpf/syscalls.c and
benchmarks/RESULTS.md). A collect
reads the slot hash and the used prefix of the per-CPU counts array with
batch operations: a handful of syscalls, whatever the number of series.

ABIs: every call is named by the table of the ABI it entered through. On
x86_64 the kernel flags i386 calls (`int $0x80`, sysenter, 32-bit
processes) with TS_COMPAT in thread_info.status; the probe reads it at the
offset the running kernel's BTF gives (exporter/btf.py), so i386 ptrace (26)
is counted as ptrace, not as x86_64's msync. x32 calls (bit 30 set) are named
by the x32 table. Numbers no table names count as syscall="unknown", one
series (and one kernel slot) per cgroup. Without BTF the i386 ABI cannot be
told apart: orb8_syscall_abi_detected is 0 and `orb8 diagnose` says so.

Caveats: counts of a removed
cgroup are exported for `deleted_cgroup_grace` seconds, then its kernel
entries are freed and its slots reused; counts folded into
cgroup="<unresolved>" are carried in user space so that series stays
monotonic.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporter import probes
from exporter.config import MIB
from exporter.identity import Resolver
from exporter.identity.cgroupfs import cgroup_pids, own_cgroup
from exporter.model import IDENTITY_LABELS, Identity, MetricFamily, counter, gauge
from exporter.sources.exporter_self import program_families
from exporter.sources.lifecycle import CarriedCounts, CgroupLifecycle
from exporter.sources.mapstats import MapStats, map_families, memory_family
from exporter.sources.syscalls.baseline import Baselines
from exporter.sources.syscalls.counts import SyscallCounts
from exporter.sources.syscalls.evidence import (
    Allowlist,
    RateLimiter,
    evidence_line,
    monotonic_to_wall_offset,
)
from exporter.sources.syscalls.names import (
    ABI_SHIFT,
    ABIS,
    _arch,
    abi_status_offset,
    abi_tables,
    ia32_emulation,
    native_syscall_numbers,
    syscall_namer,
)
from exporter.sources.syscalls.settings import DEFAULT_DANGEROUS_SYSCALLS

log = logging.getLogger(__name__)

SLOT_MAP = "syscall_slots"
DANGEROUS_MAP = "dangerous_counts"
DANGEROUS_CAPACITY = 4096
NR_TABLE = 1024  # every ABI's numbers are below this (bpf/syscalls.c)
KEY_UNKNOWN = 0xFFFFFFFF  # numbers no table names, one key per cgroup
FLAG_KNOWN, FLAG_DANGEROUS = 1, 2
TS_COMPAT = 0x0002  # arch/x86/include/asm/thread_info.h, unchanged since 2.6
EXCLUDED_CAPACITY = 64  # cgroups of orb8 instances whose dangerous calls are not counted
# ringbuf_stats indices (enum ringbuf_stat in bpf/syscalls.c)
RB_WRITTEN, RB_DROPPED, RB_SAMPLED, RB_PEAK = 0, 1, 2, 3
PEAK_WINDOW = 60.0  # seconds orb8_ring_buffer_utilization looks back
# (tracepoint, program) per variant, raw first; cache invalidation hooks
# before the counter itself.
HOOKS = {
    True: (
        ("sched_switch", "syscalls_switch_raw"),
        ("cgroup_attach_task", "syscalls_attach_raw"),
        ("sys_enter", "syscalls_enter_raw"),
    ),
    False: (
        ("sched:sched_switch", "syscalls_switch_tp"),
        ("cgroup:cgroup_attach_task", "syscalls_attach_tp"),
        ("raw_syscalls:sys_enter", "syscalls_enter_tp"),
    ),
}
RECORD_BYTES = 56  # struct dangerous_event (48) + 8-byte header, 8-aligned
evidence_log = logging.getLogger("orb8.evidence")

Series = dict[tuple[Identity, int], int]


@dataclass(frozen=True)
class SecurityOptions:
    dangerous: tuple[str, ...] = DEFAULT_DANGEROUS_SYSCALLS
    allowlist: tuple[str, ...] = ()
    exclude_self: bool = True
    ring_buffer_size: int = MIB
    sample_every: int = 10
    log_per_minute: int = 6
    baseline_window: float = 600.0
    state_dir: Path | None = None


class SyscallSource:
    name = "syscalls"

    def __init__(
        self,
        resolver: Resolver,
        slots: int,
        deleted_grace: float,
        headers: probes.KernelHeaders | None = None,
        clock: Callable[[], float] = time.monotonic,
        hook: str = "auto",
        bpf_dir: Path | None = None,
        deleted_pod_grace: float | None = None,
        security: SecurityOptions | None = None,
        abi_detection: bool = True,
    ) -> None:
        """hook: "auto" feature-probes the kernel; "raw_tracepoint" or
        "tracepoint" forces a variant (tests exercise the fallback this way).
        abi_detection=False leaves the compat flag unread (benchmarks)."""
        self.resolver = resolver
        self.requested_hook = hook
        self.bpf_dir = bpf_dir
        self.capacity = slots
        self.lifecycle = CgroupLifecycle(resolver, deleted_grace, deleted_pod_grace)
        self.headers = headers
        self.clock = clock
        self.security = security or SecurityOptions()
        self.syscall_name = syscall_namer()
        numbers = native_syscall_numbers()
        self.dangerous_numbers = sorted({numbers[name] for name in self.security.dangerous})
        self.abi_detection = abi_detection
        self.abi_offset: int | None = None
        self.abi_detail = "i386 detection off"
        self.abi_told_apart = False  # no syscall can be misnamed by its ABI
        self._excluded: set[int] = set()
        self._own_cgroup: int | None = None
        self._own_workload: tuple[str, str] | None = None  # (namespace, owner) in Kubernetes
        self.allowlist = Allowlist(self.security.allowlist)
        self.rate_limiter = RateLimiter(self.security.log_per_minute)
        self.baselines = Baselines(self.security.baseline_window, self.security.state_dir)
        self.hook = ""
        self._bpf: Any = None
        # The kernel maps (probes.BpfMaps once started); tests hand in an
        # in-memory stand-in through use_maps().
        self._maps: Any = None
        self._read_event: Any = None  # ring buffer record decoder (probes.record_reader)
        self._stop = threading.Event()
        self._evidence_thread: threading.Thread | None = None
        self._consumed = 0
        self._boot_offset = monotonic_to_wall_offset()
        # Final counts of retired cgroups, keyed (identity, key), for all
        # syscalls and for dangerous ones; novel calls are counted in user
        # space under the same rule (exporter/sources/lifecycle.py).
        self._carried = CarriedCounts()
        self._peaks: deque[tuple[float, int]] = deque()  # (monotonic time, ring peak)
        self._carried_dangerous = CarriedCounts()
        self._novel = CarriedCounts()
        # orb8_syscalls_total's rows, kept between collects (counts.py).
        self._counts = SyscallCounts(
            abi_tables(),
            (*IDENTITY_LABELS, "syscall"),
            self.baselines,
            self.resolver.owners,
            self._novel,
        )

    def describe(self) -> str:
        return (
            f"hook={self.hook or 'none'} slots={self.capacity} "
            f"dangerous={len(self.dangerous_numbers)} ring_buffer={self.security.ring_buffer_size} "
            f"abi: {self.abi_detail}"
        )

    def start(self) -> None:
        self.hook = (
            probes.choose_sys_enter_hook() if self.requested_hook == "auto" else self.requested_hook
        )
        defines = {
            "SLOT_CAPACITY": self.capacity,
            "DANGEROUS_CAPACITY": DANGEROUS_CAPACITY,
            "EXCLUDED_CAPACITY": EXCLUDED_CAPACITY,
            "RINGBUF_PAGES": self.security.ring_buffer_size // 4096,
            "RINGBUF_SAMPLE_EVERY": self.security.sample_every,
        }
        possible, why = ia32_emulation() if _arch(None) == "x86_64" else (True, "")
        if self.abi_detection and not possible:
            # Nothing to tell apart, and the hot path skips the read.
            self.abi_detail, self.abi_told_apart = why, True
        elif self.abi_detection:
            self.abi_offset, self.abi_detail = abi_status_offset()
            self.abi_told_apart = self.abi_offset is not None
            if self.abi_offset is None:
                log.warning(
                    "syscalls probe: %s; they are counted under native names", self.abi_detail
                )
            else:
                defines["ABI_STATUS_OFFSET"] = self.abi_offset
                defines["ABI_COMPAT_FLAG"] = TS_COMPAT
        bpf = probes.compile_probe("syscalls", defines, self.headers, self.bpf_dir)
        try:
            self._configure(bpf)
            # Cache invalidation hooks first, then the counter itself.
            raw = self.hook == "raw_tracepoint"
            for tracepoint, fn_name in HOOKS[raw]:
                probes.attach_tracepoint(bpf, tracepoint, fn_name, raw)
            self._read_event = probes.record_reader(bpf, "dangerous_events", "evidence record")
            probes.open_ring_buffer(bpf, "dangerous_events", self._on_event)
        except Exception as e:
            bpf.cleanup()
            raise probes.ProbeError(f"attaching syscalls probe ({self.hook}) failed: {e}") from e
        self._bpf = bpf
        self._maps = probes.BpfMaps(bpf)
        self._stop.clear()
        self._evidence_thread = threading.Thread(
            target=self._poll_evidence, name="evidence", daemon=True
        )
        self._evidence_thread.start()
        log.info("syscalls probe attached: %s", self.describe())

    def _configure(self, bpf: Any) -> None:
        """Fill the maps the programs read before they are attached."""
        # Free slots, pushed in reverse so slot 0 is handed out first and the
        # used slots stay a compact prefix.
        maps = probes.BpfMaps(bpf)
        for slot in range(self.capacity - 1, -1, -1):
            maps.push("syscall_free_slots", slot)
        # Epoch 0 means "invalid" to the per-CPU cgroup id cache.
        maps.put("syscall_epoch", 0, 1)
        dangerous = set(self.security.dangerous)
        for abi, table in abi_tables().items():
            for nr, name in table.items():
                if nr >= NR_TABLE:
                    raise probes.ProbeError(f"syscall {name} ({nr}) is beyond the kernel table")
                value = FLAG_KNOWN | (FLAG_DANGEROUS if name in dangerous else 0)
                maps.put("syscall_flags", abi * NR_TABLE + nr, value)
        if self.security.exclude_self:
            maps.put("dangerous_config", 0, os.getpid())
            directory = own_cgroup(self.resolver.tree.root)
            others = [] if directory is None else _foreign_processes(cgroup_pids(directory))
            if directory is not None and others:
                # A shared cgroup (e.g. a login session): excluding it would
                # hide other processes' calls. Only orb8's own pid is excluded.
                log.warning(
                    "orb8's cgroup %s also holds %d other process(es) (e.g. pid %d): only "
                    "orb8's own dangerous calls are excluded; run orb8 in its own cgroup "
                    "(container, systemd service) so that a second orb8 beside it is too",
                    directory,
                    len(others),
                    others[0],
                )
            elif directory is not None:
                self._own_cgroup = directory.stat().st_ino
                self._exclude(maps, self._own_cgroup)

    def _exclude(self, maps: Any, cgroup_id: int) -> None:
        """Stop counting a cgroup's dangerous calls (it runs orb8)."""
        if cgroup_id in self._excluded or len(self._excluded) >= EXCLUDED_CAPACITY:
            return
        maps.put("dangerous_excluded", cgroup_id, 1)
        self._excluded.add(cgroup_id)
        log.info("dangerous syscalls of cgroup id %d (orb8) are not counted", cgroup_id)

    def _exclude_own_workload(self, identities: dict[int, Identity]) -> None:
        """In Kubernetes, other pods of orb8's own workload (the old and new
        pods of a DaemonSet rollout) are orb8 too: exclude their cgroups."""
        if self._own_cgroup is None:
            return
        if self._own_workload is None:
            own = identities.get(self._own_cgroup)
            if own is None or not own.pod:
                return
            owner = self.resolver.owners().get((own.namespace, own.pod))
            if not owner:
                return
            self._own_workload = own_workload = (own.namespace, owner)
            log.info("dangerous syscalls of orb8's workload %s/%s are not counted", *own_workload)
        for cgroup_id, identity in identities.items():
            if cgroup_id not in self._excluded and self._is_own_workload(identity):
                self._exclude(self._maps, cgroup_id)

    def _is_own_workload(self, identity: Identity) -> bool:
        if not identity.pod or self._own_cgroup is None:
            return False
        if self._own_workload is None:
            # Evidence can arrive before the first collect: look orb8 up now.
            own = self.resolver.resolve(self._own_cgroup, self.clock()).identity
            owner = self.resolver.owners().get((own.namespace, own.pod)) if own.pod else None
            if not owner:
                return False
            self._own_workload = (own.namespace, owner)
        namespace, owner = self._own_workload
        return (
            identity.namespace == namespace
            and self.resolver.owners().get((namespace, identity.pod)) == owner
        )

    def close(self) -> None:
        self._stop.set()
        if self._evidence_thread is not None:
            self._evidence_thread.join(timeout=5)
            if self._evidence_thread.is_alive():
                # Still inside ring_buffer_poll: freeing the ring buffer under it
                # segfaults. The process is exiting; the kernel frees it all.
                log.warning("evidence reader still busy at shutdown: leaving BPF cleanup to exit")
                self._bpf = None
            self._evidence_thread = None
        self._maps = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
        self.baselines.save()

    # -- evidence --------------------------------------------------------------

    def _poll_evidence(self) -> None:
        maps = self._maps
        while not self._stop.is_set():
            try:
                probes.poll_ring_buffer(self._bpf, 100)
                maps.put("ringbuf_progress", 1, self._consumed)
            except Exception:
                if self._stop.is_set():
                    break
                log.error("reading the evidence ring buffer failed", exc_info=True)
                self._stop.wait(1)

    def _on_event(self, ctx: Any, data: Any, size: int) -> int:
        self._consumed += 1
        try:
            event = self._read_event(data, size)
            identity = self.resolver.resolve(event.cgroup_id, self.clock()).identity
            if self.allowlist.allows(identity) or self._is_own_workload(identity):
                return 0
            syscall = self.syscall_name(event.nr)
            admitted, suppressed = self.rate_limiter.admit((identity, event.nr))
            if admitted:
                abi = ABIS[event.nr >> ABI_SHIFT] if event.nr >> ABI_SHIFT < len(ABIS) else "?"
                evidence_log.warning(
                    evidence_line(event, identity, syscall, suppressed, self._boot_offset, abi)
                )
        except Exception as e:  # one line, rate-limited by the log filter
            log.error("bad evidence record: %s: %s", type(e).__name__, e)
        return 0

    # -- collect ---------------------------------------------------------------

    def use_maps(self, maps: Any) -> None:
        """Collect from `maps` (anything with probes.BpfMaps' methods) instead
        of a loaded probe: the unit tests' seam."""
        self._maps = maps

    def _read_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, counts) of every (cgroup, syscall key) pair in the kernel map."""
        keys, slots = self._maps.read_hash(SLOT_MAP, self.capacity, 1)
        slots = slots[:, 0]
        used = int(slots.max()) + 1 if len(slots) else 0
        totals = self._maps.percpu_array_sums("syscall_counts", used)
        return keys, totals[slots] if len(slots) else slots

    def _read_dangerous(self) -> tuple[np.ndarray, np.ndarray]:
        keys, counts = self._maps.read_hash(DANGEROUS_MAP, DANGEROUS_CAPACITY, 1)
        return keys, counts[:, 0]

    def collect(self) -> list[MetricFamily]:
        if self._maps is None:
            raise probes.ProbeError("syscalls probe is not loaded")
        now = self.clock()
        keys, counts = self._read_pairs()
        d_keys, d_counts = self._read_dangerous()
        cgroup_ids, nrs = keys["cgroup_id"], keys["nr"]
        d_cgroup_ids, d_nrs = d_keys["cgroup_id"], d_keys["nr"]
        self.resolver.refresh()

        identities, retire = self.lifecycle.resolve(
            map(int, np.unique(np.concatenate([cgroup_ids, d_cgroup_ids]))), now
        )
        self._exclude_own_workload(identities)
        present = set(identities.values())
        syscalls = self._counts.update(identities, cgroup_ids, nrs, counts, self._carried, present)
        dangerous = _aggregate(
            identities, d_cgroup_ids, d_nrs, d_counts, self._carried_dangerous, present
        )

        novel = {key: value for key, (value,) in self._novel.items(present)}
        families = [
            *self._families(syscalls, dangerous, novel, len(cgroup_ids), len(d_cgroup_ids)),
            *self._ring_buffer_families(),
            *program_families(self._maps.programs()),
        ]
        if retire:
            self._retire(retire, identities, (keys, counts), (d_keys, d_counts))
        dropped = set()
        for ledger in (self._carried, self._carried_dangerous, self._novel):
            dropped |= ledger.expire(present, now)
        self._counts.forget(dropped)
        return families

    def _families(
        self,
        syscalls: MetricFamily,
        dangerous: Series,
        novel_series: Series,
        entries: int,
        dangerous_entries: int,
    ) -> list[MetricFamily]:
        labels = (*IDENTITY_LABELS, "syscall")
        dangerous_family = counter(
            "orb8_dangerous_syscalls_total",
            "Attempts of dangerous syscalls (successful or not), counted in the kernel; "
            "orb8 itself and allowlisted workloads excluded.",
            labels,
        )
        for (identity, name), value in self._by_name(dangerous).items():
            if not self.allowlist.allows(identity) and not self._is_own_workload(identity):
                dangerous_family.add((*identity, name), value)
        novel = counter(
            "orb8_syscall_novel_total",
            "Syscalls made outside the workload's learned baseline.",
            labels,
        )
        for (identity, name), value in self._by_name(novel_series).items():
            novel.add((*identity, name), value)
        maps = map_families(
            [
                MapStats(
                    SLOT_MAP,
                    entries,
                    self.capacity,
                    self._maps.percpu_sum("syscall_update_failures"),
                ),
                MapStats(
                    DANGEROUS_MAP,
                    dangerous_entries,
                    DANGEROUS_CAPACITY,
                    self._maps.percpu_sum("dangerous_update_failures"),
                ),
            ]
        )
        maps.append(memory_family(self._maps.memory()))
        abi = gauge(
            "orb8_syscall_abi_detected",
            "1 when syscalls entering through the i386 ABI are named by the i386 table "
            "(or this kernel cannot run any); 0 when they cannot be told apart from native ones.",
        )
        abi.add((), 1 if self.abi_told_apart else 0)
        return [syscalls, dangerous_family, novel, *maps, abi]

    def _by_name(self, series: Series) -> dict[tuple[Identity, str], int]:
        """Kernel keys -> syscall names: an i386 and a native ptrace are one series."""
        named: dict[tuple[Identity, str], int] = defaultdict(int)
        for (identity, key), value in series.items():
            named[(identity, self.syscall_name(key))] += value
        return named

    def _ring_buffer_families(self) -> list[MetricFamily]:
        probe = (self.name,)
        values = {
            i: self._maps.percpu_values("ringbuf_stats", i)
            for i in (RB_WRITTEN, RB_DROPPED, RB_SAMPLED, RB_PEAK)
        }
        # The kernel keeps the peak since it was last zeroed; collects also run
        # for housekeeping and OTLP pushes, so keep the highest of the last
        # PEAK_WINDOW seconds here rather than only what came since the last
        # collect (a burst between a housekeeping tick and a scrape is not lost).
        self._maps.zero("ringbuf_stats", RB_PEAK)
        now = time.monotonic()
        self._peaks.append((now, max(values[RB_PEAK])))
        while self._peaks and self._peaks[0][0] < now - PEAK_WINDOW:
            self._peaks.popleft()
        size = self.security.ring_buffer_size
        families = []
        for name, help_text, stat in (
            ("events_total", "Evidence records written to the ring buffer.", RB_WRITTEN),
            (
                "drops_total",
                "Evidence records not written (buffer full, or sampled away); "
                "events_total + drops_total = dangerous calls.",
                RB_DROPPED,
            ),
            (
                "sampled_total",
                "Of the drops, records left out on purpose while the buffer was over 90% full.",
                RB_SAMPLED,
            ),
        ):
            family = counter(f"orb8_ring_buffer_{name}", help_text, ("probe",))
            family.add(probe, sum(values[stat]))
            families.append(family)
        utilization = gauge(
            "orb8_ring_buffer_utilization",
            f"Highest fill of the ring buffer over the last {PEAK_WINDOW:.0f} s, 0 to 1.",
            ("probe",),
        )
        utilization.add(probe, min(1.0, max(peak for _, peak in self._peaks) / size))
        size_family = gauge("orb8_ring_buffer_size_bytes", "Size of the ring buffer.", ("probe",))
        size_family.add(probe, size)
        return [*families, utilization, size_family]

    def _retire(
        self,
        retire: list[int],
        identities: dict[int, Identity],
        pairs: tuple[np.ndarray, np.ndarray],
        dangerous: tuple[np.ndarray, np.ndarray],
    ) -> None:
        """Free the kernel entries of removed cgroups once their grace is over.

        Their final counts always go to the carried counts (the one carry
        rule, exporter/sources/lifecycle.py): the series continues if its
        identity is, or comes back, in use (<unresolved>; a restarted
        service keeps its path but gets a new cgroup id). A removed cgroup
        runs no task, so nothing is counted between the read and the delete.
        """
        retiring = set(retire)
        keys, counts = pairs
        for key, count in zip(keys, counts.tolist(), strict=True):
            cgroup_id = int(key["cgroup_id"])
            if cgroup_id not in retiring:
                continue
            self._carried.add((identities[cgroup_id], int(key["nr"])), count)
            slot = self._maps.pop(SLOT_MAP, key.tobytes())
            if slot is None:
                continue
            self._maps.zero("syscall_counts", slot)
            self._maps.push("syscall_free_slots", slot)
        keys, counts = dangerous
        for key, count in zip(keys, counts.tolist(), strict=True):
            cgroup_id = int(key["cgroup_id"])
            if cgroup_id in retiring:
                self._carried_dangerous.add((identities[cgroup_id], int(key["nr"])), count)
                self._maps.delete(DANGEROUS_MAP, key.tobytes())
        self.lifecycle.retired(retire)
        log.info("retired %d removed cgroup(s) from the syscall maps", len(retire))


def _foreign_processes(pids: list[int], proc: Path = Path("/proc")) -> list[int]:
    """The pids that are neither this process nor another orb8."""
    foreign = []
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited
        if not any(
            arg == b"exporter.cli" or arg.endswith(b"/orb8") or arg == b"orb8" for arg in argv[:3]
        ):
            foreign.append(pid)
    return foreign


def _rows(cgroup_ids: np.ndarray, nrs: np.ndarray, counts: np.ndarray):
    return zip(cgroup_ids.tolist(), nrs.tolist(), counts.tolist(), strict=True)


def _aggregate(
    identities: dict[int, Identity],
    cgroup_ids: np.ndarray,
    nrs: np.ndarray,
    counts: np.ndarray,
    carried: CarriedCounts,
    present: set[Identity],
) -> Series:
    """Sum kernel counts (plus carried ones) per (identity, syscall key)."""
    series: Series = defaultdict(int)
    for key, (value,) in carried.items(present):
        series[key] += value  # type: ignore[index]
    for cgroup_id, nr, count in _rows(cgroup_ids, nrs, counts):
        series[(identities[cgroup_id], nr)] += count
    return series
