"""Syscalls per cgroup, counted exactly in the kernel; dangerous ones also as evidence.

Hooks: tp_btf/sys_enter counts where the i386 check is on and the kernel
loads it (it reads pt_regs without a helper, see bpf/syscalls.c), else the
raw tracepoint sys_enter (classic raw_syscalls:sys_enter as the last
fallback); `hook=` in `orb8 diagnose`, `orb8 check` and the start-up log
says which, and why not tp_btf. sched_switch and cgroup_attach_task keep
the per-CPU cgroup id cache honest. Program bpf/syscalls.c.

Metrics: orb8_syscalls_total{namespace,pod,container,cgroup,syscall};
orb8_dangerous_syscalls_total{...,syscall} (attempts, exact, orb8 itself and
allowlisted workloads excluded); orb8_syscall_novel_total{...,syscall}
(outside the workload's learned baseline, see baseline.py);
orb8_ring_buffer_{events,drops,sampled}_total, _utilization, _size_bytes
for probe="syscalls"; orb8_bpf_map_entries / _capacity / _update_failures_total
for map="syscall_slots", "dangerous_counts" and "dangerous_buckets". Each
dangerous call may also be one JSON evidence line (evidence.py): the kernel
writes at most `dangerous_evidence_rate` records a second per cgroup (bursts
of `dangerous_evidence_burst`) and counts the rest per (cgroup, syscall) in
orb8_dangerous_evidence_suppressed_total; the next record of the cgroup
says how many. dangerous_counts holds one entry per (cgroup, dangerous
name) whatever the ABI; calls that find it full are counted per name under
cgroup="<overflow>", and their evidence names the cgroup.

Overhead: no helper call and three inlined array lookups per syscall on the
hot path, plus one array store per context switch (see bpf/syscalls.c and
benchmarks/RESULTS.md); the i386 check adds one helper call on calls that
need it (all of them on the raw tracepoint; with tp_btf only those whose
registers or number call for it: docs/metrics.md, "ABIs"). A collect
reads the slot hash and the used prefix of the per-CPU counts array with
batch operations: a handful of syscalls, whatever the number of series.

ABIs: every call is named by the table of the ABI it entered through. On
x86_64 the kernel flags i386 calls (`int $0x80`, sysenter, 32-bit
processes) with TS_COMPAT in thread_info.status; the probe reads it at the
offset the running kernel's BTF gives (exporter/kernel/btf.py), so i386 ptrace (26)
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

from exporter import kernel
from exporter.config import MIB
from exporter.identity import Resolver
from exporter.identity.cgroupfs import cgroup_pids, own_cgroup
from exporter.kernel import attach, compiler, headers
from exporter.kernel.maps import (
    BpfMaps,
    KernelMaps,
    loaded,
    open_ring_buffer,
    poll_ring_buffer,
    record_reader,
)
from exporter.model import IDENTITY_LABELS, UNRESOLVED, Identity, MetricFamily, counter, gauge
from exporter.selfmetrics import program_families, table_families
from exporter.sources.lifecycle import CarriedCounts, CgroupLifecycle
from exporter.sources.mapstats import MapStats, map_families, memory_family
from exporter.sources.syscalls.baseline import DEFAULT_CAPACITY as BASELINE_CAPACITY
from exporter.sources.syscalls.baseline import DEFAULT_FORGET_AFTER as BASELINE_FORGET_AFTER
from exporter.sources.syscalls.baseline import Baselines
from exporter.sources.syscalls.counts import NamedCounts, SyscallCounts
from exporter.sources.syscalls.evidence import (
    MAX_RATE_KEYS,
    Allowlist,
    RateLimiter,
    evidence_line,
    monotonic_to_wall_offset,
)
from exporter.sources.syscalls.maps import EXCLUDED_CAPACITY, NR_TABLE
from exporter.sources.syscalls.names import (
    ABI_SHIFT,
    ABIS,
    SYS_ENTER_BTF,
    RegsLayout,
    _arch,
    abi_status_offset,
    abi_tables,
    ia32_emulation,
    native_syscall_numbers,
    regs_layout,
    syscall_namer,
)
from exporter.sources.syscalls.settings import DEFAULT_DANGEROUS_SYSCALLS

log = logging.getLogger(__name__)

SLOT_MAP = "syscall_slots"
DANGEROUS_MAP = "dangerous_counts"
OVERFLOW_MAP = "dangerous_overflow"
BUCKETS_MAP = "dangerous_buckets"
# Dangerous calls that found dangerous_counts full: counted per name here.
OVERFLOW = Identity(cgroup="<overflow>")
NATIVE_SHIFT = 16  # syscall_flags: a dangerous key's native number (bpf/syscalls.c)
KEY_UNKNOWN = 0xFFFFFFFF  # numbers no table names, one key per cgroup
FLAG_KNOWN, FLAG_DANGEROUS, FLAG_ABI_SENSITIVE = 1, 2, 4
I386 = 1  # ABI index of the i386 table (bpf/syscalls.c)
TS_COMPAT = 0x0002  # arch/x86/include/asm/thread_info.h, unchanged since 2.6
# ringbuf_stats indices (enum ringbuf_stat in bpf/syscalls.c)
RB_WRITTEN, RB_DROPPED, RB_SAMPLED, RB_PEAK = 0, 1, 2, 3
PEAK_WINDOW = 60.0  # seconds orb8_ring_buffer_utilization looks back
# Fill of dangerous_counts from which the entries of empty, idle cgroups
# (e.g. an attacker's, left behind to keep the map full) are freed.
PRESSURE = 0.5
IDLE_CHECKS = 512  # cgroup.events reads per collect, at most
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
# Evidence records waiting for a cgroup walk: ~2 s of 2,000 new cgroups/s.
DEFERRED_CAPACITY = 4096
RECORD_BYTES = 80  # struct dangerous_event (72) + 8-byte header, 8-aligned
evidence_log = logging.getLogger("orb8.evidence")

Series = dict[tuple[Identity, int], int]


@dataclass(frozen=True)
class SecurityOptions:
    dangerous: tuple[str, ...] = DEFAULT_DANGEROUS_SYSCALLS
    allowlist: tuple[str, ...] = ()
    exclude_self: bool = True
    ring_buffer_size: int = MIB
    sample_every: int = 10
    dangerous_slots: int = 16384
    evidence_rate: float = 5.0  # records per second per cgroup, in the kernel
    evidence_burst: int = 20
    log_per_minute: int = 6
    baseline_window: float = 600.0
    baseline_forget_after: float = BASELINE_FORGET_AFTER
    baseline_capacity: int = BASELINE_CAPACITY
    state_dir: Path | None = None


class SyscallSource:
    name = "syscalls"

    def __init__(
        self,
        resolver: Resolver,
        slots: int,
        deleted_grace: float,
        headers: headers.KernelHeaders | None = None,
        clock: Callable[[], float] = time.monotonic,
        hook: str = "auto",
        bpf_dir: Path | None = None,
        deleted_pod_grace: float | None = None,
        security: SecurityOptions | None = None,
        abi_detection: bool = True,
        tp_btf_target: str = SYS_ENTER_BTF,
    ) -> None:
        """hook: "auto" feature-probes the kernel; "tp_btf", "raw_tracepoint"
        or "tracepoint" forces a variant (tests exercise the fallbacks this
        way; a forced "tp_btf" that cannot load is an error, not a fallback).
        abi_detection=False leaves the compat flag unread (benchmarks).
        tp_btf_target: the BTF typedef the tp_btf program attaches to (tests
        name another tracepoint's to exercise the kernel's refusal)."""
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
        self.baselines = Baselines(
            self.security.baseline_window,
            self.security.state_dir,
            capacity=self.security.baseline_capacity,
            forget_after=self.security.baseline_forget_after,
        )
        self.hook = ""
        self.hook_detail = ""  # why tp_btf is not the hook, where it is not
        # -D options of measured-only program variants (benchmarks/).
        self.extra_defines: dict[str, Any] = {}
        self.tp_btf_target = tp_btf_target
        self._enter_btf: attach.BtfTracepoint | None = None
        self._bpf: Any = None
        # The kernel maps (BpfMaps once started); tests hand in an
        # in-memory stand-in through use_maps().
        self._maps: KernelMaps | None = None
        self._read_event: Any = None  # ring buffer record decoder (record_reader)
        self._stop = threading.Event()
        self._evidence_thread: threading.Thread | None = None
        self._consumed = 0
        # Evidence records of cgroups the last walk did not see, waiting for
        # the next batched one: (when read, a copy of the record).
        self._deferred: deque[tuple[float, Any]] = deque()
        self._boot_offset = monotonic_to_wall_offset()
        # Final counts of retired cgroups, keyed (identity, key), for all
        # syscalls and for dangerous ones; novel calls are counted in user
        # space under the same rule (exporter/sources/lifecycle.py).
        self._carried = CarriedCounts()
        self._peaks: deque[tuple[float, int]] = deque()  # (monotonic time, ring peak)
        self._carried_dangerous = CarriedCounts()
        self._carried_suppressed = CarriedCounts()
        # cgroup id -> (its dangerous calls, since when unchanged), kept while
        # dangerous_counts is under pressure.
        self._dangerous_idle: dict[int, tuple[int, float]] = {}
        self._novel = CarriedCounts()
        # orb8_syscalls_total's rows, kept between collects (counts.py).
        self._counts = SyscallCounts(
            abi_tables(),
            (*IDENTITY_LABELS, "syscall"),
            self.baselines,
            self.resolver.owners,
            self._novel,
        )
        self._dangerous_counts = NamedCounts(
            "orb8_dangerous_syscalls_total",
            "Attempts of dangerous syscalls (successful or not), counted in the kernel; "
            "orb8 itself and allowlisted workloads excluded.",
            (*IDENTITY_LABELS, "syscall"),
            self._counts.names,
            self._counts.name_of_key,
        )

    def summary(self) -> str:
        return (
            f"hook={self.hook or 'none'}"
            + (f" ({self.hook_detail})" if self.hook_detail else "")
            + f" slots={self.capacity} "
            f"dangerous={len(self.dangerous_numbers)} "
            f"dangerous_slots={self.security.dangerous_slots} "
            f"evidence={self.security.evidence_rate:g}/s burst {self.security.evidence_burst} "
            f"ring_buffer={self.security.ring_buffer_size} "
            f"abi: {self.abi_detail}"
        )

    def start(self) -> None:
        if self.requested_hook not in ("auto", "tp_btf", "raw_tracepoint", "tracepoint"):
            raise ValueError(f"unknown syscalls hook {self.requested_hook!r}")
        self.hook = (
            attach.choose_sys_enter_hook()
            if self.requested_hook in ("auto", "tp_btf")
            else self.requested_hook
        )
        self.hook_detail = ""
        defines = {
            "SLOT_CAPACITY": self.capacity,
            "DANGEROUS_CAPACITY": self.security.dangerous_slots,
            "EVIDENCE_INTERVAL_NS": f"{max(1, round(1e9 / self.security.evidence_rate))}ull",
            "EVIDENCE_BURST": self.security.evidence_burst,
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
        layout = self._plan_tp_btf(defines)
        defines.update(self.extra_defines)
        bpf = compiler.compile_probe("syscalls", defines, self.headers, self.bpf_dir)
        try:
            self._configure(bpf)
            # Cache invalidation hooks first, then the counter itself.
            raw = self.hook == "raw_tracepoint"
            *invalidation, (enter_tracepoint, enter_fn) = HOOKS[raw]
            for tracepoint, fn_name in invalidation:
                attach.attach_tracepoint(bpf, tracepoint, fn_name, raw)
            if layout is None or not self._attach_tp_btf(bpf, layout.sys_enter_btf_id):
                attach.attach_tracepoint(bpf, enter_tracepoint, enter_fn, raw)
            self._read_event = record_reader(bpf, "dangerous_events", "evidence record")
            open_ring_buffer(bpf, "dangerous_events", self._on_event)
        except Exception as e:
            self._close_tp_btf()
            bpf.cleanup()
            raise kernel.ProbeError(f"attaching syscalls probe ({self.hook}) failed: {e}") from e
        self._bpf = bpf
        self._maps = BpfMaps(bpf)
        self._stop.clear()
        self._evidence_thread = threading.Thread(
            target=self._poll_evidence, name="evidence", daemon=True
        )
        self._evidence_thread.start()
        log.info("syscalls probe attached: %s", self.summary())

    def _plan_tp_btf(self, defines: dict[str, Any]) -> RegsLayout | None:
        """Whether to count with tp_btf/sys_enter (bpf/syscalls.c,
        syscalls_enter_btf): only where it saves something, i.e. where the
        i386 check is compiled in, and raw tracepoints exist."""
        forced = self.requested_hook == "tp_btf"
        why = ""
        if self.requested_hook not in ("auto", "tp_btf"):
            return None
        if self.hook != "raw_tracepoint":
            why = "no raw tracepoints"
        elif "ABI_STATUS_OFFSET" not in defines:
            why = "no i386 check to spare"
        if why and forced:
            raise kernel.ProbeError(f"hook tp_btf requested, but {why}")
        if why:
            return None
        layout, detail = regs_layout(target=self.tp_btf_target)
        if layout is None:
            if forced:
                raise kernel.ProbeError(f"hook tp_btf requested, but {detail}")
            self.hook_detail = f"tp_btf unusable: {detail}"
            log.warning("syscalls probe: %s; the i386 check runs on every syscall", detail)
            return None
        defines.update(layout.defines())
        return layout

    def _attach_tp_btf(self, bpf: Any, btf_id: int) -> bool:
        """Load and attach syscalls_enter_btf; False (logged) if this kernel
        refuses it and the raw tracepoint is to be used instead."""
        try:
            self._enter_btf = attach.BtfTracepoint(bpf, "syscalls_enter_btf", btf_id)
            self._enter_btf.attach()
        except OSError as e:
            self._close_tp_btf()
            unused = bpf.funcs.pop(b"syscalls_enter_btf", None)  # loaded, refused at attach
            if unused is not None:
                os.close(unused.fd)
            if self.requested_hook == "tp_btf":
                raise kernel.ProbeError(f"tp_btf/sys_enter: {e}") from e
            self.hook_detail = f"tp_btf refused: {e}"
            log.warning(
                "syscalls probe: tp_btf/sys_enter could not load (%s); the raw tracepoint "
                "checks the i386 flag on every syscall",
                e,
            )
            return False
        self.hook = "tp_btf"
        return True

    def _close_tp_btf(self) -> None:
        if self._enter_btf is not None:
            self._enter_btf.detach()  # the program itself is closed with the BCC object
            self._enter_btf = None

    def _configure(self, bpf: Any) -> None:
        """Fill the maps the programs read before they are attached."""
        # Free slots, pushed in reverse so slot 0 is handed out first and the
        # used slots stay a compact prefix.
        maps = BpfMaps(bpf)
        for slot in range(self.capacity - 1, -1, -1):
            maps.push("syscall_free_slots", slot)
        # Epoch 0 means "invalid" to the per-CPU cgroup id cache.
        maps.put("syscall_epoch", 0, 1)
        dangerous = set(self.security.dangerous)
        native = native_syscall_numbers()
        flags = syscall_flags(abi_tables(), dangerous, native)
        for index, value in sorted(flags.items()):
            maps.put("syscall_flags", index, value)
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
            resolution = self.resolver.peek(self._own_cgroup, self.clock())
            if resolution is None:
                return False
            own = resolution.identity
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
        reader_done = True
        if self._evidence_thread is not None:
            self._evidence_thread.join(timeout=5)
            if self._evidence_thread.is_alive():
                # Still inside ring_buffer_poll: freeing the ring buffer under it
                # segfaults. The process is exiting; the kernel frees it all.
                log.warning("evidence reader still busy at shutdown: leaving BPF cleanup to exit")
                self._bpf = None
                reader_done = False
            self._evidence_thread = None
        while reader_done and self._deferred:  # records waiting for a walk: logged, not lost
            seen_at, event = self._deferred.popleft()  # (one walk names them all)
            self._log_evidence(event, self.resolver.resolve(event.cgroup_id, seen_at).identity)
        self._maps = None
        if self._bpf is not None:
            self._close_tp_btf()
            self._bpf.cleanup()
            self._bpf = None
        self.baselines.save()

    # -- evidence --------------------------------------------------------------

    def _poll_evidence(self) -> None:
        maps = self._loaded_maps
        while not self._stop.is_set():
            try:
                poll_ring_buffer(self._bpf, 100)
                self._drain_deferred()
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
            seen_at = self.clock()
            resolution = self.resolver.peek(event.cgroup_id, seen_at)
            if resolution is None:
                # A cgroup the last walk did not see: never walk per record
                # (churn made that cost seconds of scrapes); wait for the
                # next batched walk instead. The record points into the ring
                # buffer, so keep a copy.
                self._defer(seen_at, type(event).from_buffer_copy(event))
            else:
                self._log_evidence(event, resolution.identity)
            self._drain_deferred()
        except Exception as e:  # one line, rate-limited by the log filter
            log.error("bad evidence record: %s: %s", type(e).__name__, e)
        return 0

    def _defer(self, seen_at: float, event: Any) -> None:
        if len(self._deferred) >= DEFERRED_CAPACITY:
            # Full: the oldest is logged now, with its cgroup id and no
            # path, rather than lost.
            _, oldest = self._deferred.popleft()
            self._log_evidence(oldest, UNRESOLVED)
        self._deferred.append((seen_at, event))

    def _drain_deferred(self) -> None:
        """Log the records that waited for a walk, once one (a collect's, or
        the batched one due now) began after the oldest was read."""
        if not self._deferred:
            return
        walked = self.resolver.walk_if_due()
        if not walked and self.resolver.tree.scanned_at < self._deferred[0][0]:
            return
        waiting: deque[tuple[float, Any]] = deque()
        while self._deferred:
            seen_at, event = self._deferred.popleft()
            resolution = self.resolver.peek(event.cgroup_id, seen_at)
            if resolution is None:
                waiting.append((seen_at, event))
            else:
                self._log_evidence(event, resolution.identity)
        self._deferred = waiting

    def _log_evidence(self, event: Any, identity: Identity) -> None:
        try:
            if self.allowlist.allows(identity) or self._is_own_workload(identity):
                return
            syscall = self.syscall_name(event.nr)
            admitted, suppressed = self.rate_limiter.admit((identity, event.nr))
            rate_limited = self.rate_limiter.rate_limited(
                (identity, event.nr), event.suppressed, event.since_ns, admitted
            )
            if admitted:
                abi = ABIS[event.nr >> ABI_SHIFT] if event.nr >> ABI_SHIFT < len(ABIS) else "?"
                evidence_log.warning(
                    evidence_line(
                        event, identity, syscall, suppressed, self._boot_offset, abi, rate_limited
                    )
                )
        except Exception as e:  # one line, rate-limited by the log filter
            log.error("bad evidence record: %s: %s", type(e).__name__, e)

    # -- collect ---------------------------------------------------------------

    def use_maps(self, maps: KernelMaps) -> None:
        """Collect from `maps` (anything with BpfMaps' methods) instead
        of a loaded probe: the unit tests' seam."""
        self._maps = maps

    @property
    def _loaded_maps(self) -> KernelMaps:
        return loaded(self._maps, "syscalls")

    def _read_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, counts) of every (cgroup, syscall key) pair in the kernel map."""
        keys, slots = self._loaded_maps.read_hash(SLOT_MAP, self.capacity, 1)
        slots = slots[:, 0]
        used = int(slots.max()) + 1 if len(slots) else 0
        totals = self._loaded_maps.percpu_array_sums("syscall_counts", used)
        return keys, totals[slots] if len(slots) else slots

    def _read_dangerous(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, [calls, suppressed] per key) of dangerous_counts."""
        return self._loaded_maps.read_hash(DANGEROUS_MAP, self.security.dangerous_slots, 2)

    def _read_overflow(self) -> tuple[Series, Series]:
        """(calls, suppressed) per native number of the calls that found
        dangerous_counts full, under cgroup="<overflow>"."""
        indices, values = self._loaded_maps.read_hash(OVERFLOW_MAP, NR_TABLE, 2)
        calls: Series = {}
        suppressed: Series = {}
        for index, (count, held) in zip(indices.tolist(), values.tolist(), strict=True):
            if count:
                calls[(OVERFLOW, int(index))] = count
                suppressed[(OVERFLOW, int(index))] = held
        return calls, suppressed

    def collect(self) -> list[MetricFamily]:
        if self._maps is None:
            raise kernel.ProbeError("syscalls probe is not loaded")
        now = self.clock()
        keys, counts = self._read_pairs()
        d_keys, d_values = self._read_dangerous()
        overflow, overflow_suppressed = self._read_overflow()
        # Right after the dangerous counts, so that records written + dropped
        # + suppressed match them (other calls keep coming meanwhile).
        ring_buffer = self._ring_buffer_families()
        d_counts, d_suppressed = d_values[:, 0], d_values[:, 1]
        cgroup_ids, nrs = keys["cgroup_id"], keys["nr"]
        d_cgroup_ids, d_nrs = d_keys["cgroup_id"], d_keys["nr"]
        self.resolver.refresh()

        identities, retire = self.lifecycle.resolve(
            map(int, np.unique(np.concatenate([cgroup_ids, d_cgroup_ids]))), now
        )
        self._exclude_own_workload(identities)
        present = set(identities.values())
        self.baselines.prune()
        syscalls = self._counts.update(identities, cgroup_ids, nrs, counts, self._carried, present)
        dangerous = self._dangerous_counts.update(
            identities,
            d_cgroup_ids,
            d_nrs,
            d_counts,
            [
                *((key, value) for key, (value,) in self._carried_dangerous.items(present)),
                *overflow.items(),
            ],
            present,
            self._shown,
        )
        suppressed = _aggregate(
            identities, d_cgroup_ids, d_nrs, d_suppressed, self._carried_suppressed, present
        )
        suppressed.update(overflow_suppressed)

        novel = {key: value for key, (value,) in self._novel.items(present)}
        families = [
            *self._families(syscalls, dangerous, novel, len(cgroup_ids), len(d_cgroup_ids)),
            self._suppressed_family(suppressed),
            *ring_buffer,
            *program_families(self._loaded_maps.programs()),
            *table_families(
                {
                    "baselines": (len(self.baselines.workloads), self.baselines.capacity),
                    "evidence_deferred": (len(self._deferred), DEFERRED_CAPACITY),
                    "evidence_rate_limit": (len(self.rate_limiter.buckets), MAX_RATE_KEYS),
                }
            ),
        ]
        if retire:
            self._retire(retire, identities, (keys, counts), (d_keys, d_values))
        if len(d_cgroup_ids) >= self.security.dangerous_slots * PRESSURE:
            self._retire_idle_dangerous(d_keys, d_values, identities, set(retire), now)
        else:
            self._dangerous_idle.clear()
        for ledger in (
            self._carried,
            self._carried_dangerous,
            self._carried_suppressed,
            self._novel,
        ):
            ledger.expire(present, now)
        return families

    def _shown(self, identity: Identity) -> bool:
        """Whether an identity's dangerous calls are exported (not allowlisted, not orb8)."""
        return not self.allowlist.allows(identity) and not self._is_own_workload(identity)

    def _families(
        self,
        syscalls: MetricFamily,
        dangerous_family: MetricFamily,
        novel_series: Series,
        entries: int,
        dangerous_entries: int,
    ) -> list[MetricFamily]:
        labels = (*IDENTITY_LABELS, "syscall")
        novel = counter(
            "orb8_syscall_novel_total",
            "Syscalls made outside the workload's learned baseline.",
            labels,
        )
        for (identity, name), value in self._by_name(novel_series).items():
            novel.add((*identity, name), value)
        buckets_capacity = self.security.dangerous_slots
        maps = map_families(
            [
                MapStats(
                    SLOT_MAP,
                    entries,
                    self.capacity,
                    self._loaded_maps.percpu_sum("syscall_update_failures"),
                ),
                MapStats(
                    DANGEROUS_MAP,
                    dangerous_entries,
                    self.security.dangerous_slots,
                    self._loaded_maps.percpu_sum("dangerous_update_failures"),
                ),
                # An LRU: full is fine (a forgotten cgroup starts a fresh limit).
                MapStats(
                    BUCKETS_MAP,
                    len(self._loaded_maps.read_hash(BUCKETS_MAP, buckets_capacity, 4)[0]),
                    self.security.dangerous_slots,
                    0,
                ),
            ]
        )
        maps.append(memory_family(self._loaded_maps.memory()))
        abi = gauge(
            "orb8_syscall_abi_detected",
            "1 when syscalls entering through the i386 ABI are named by the i386 table "
            "(or this kernel cannot run any); 0 when they cannot be told apart from native ones.",
        )
        abi.add((), 1 if self.abi_told_apart else 0)
        return [syscalls, dangerous_family, novel, *maps, abi]

    def _suppressed_family(self, suppressed: Series) -> MetricFamily:
        family = counter(
            "orb8_dangerous_evidence_suppressed_total",
            "Dangerous calls (counted in orb8_dangerous_syscalls_total) given no evidence "
            "record by their cgroup's evidence rate limit in the kernel.",
            (*IDENTITY_LABELS, "syscall"),
        )
        for (identity, name), value in self._by_name(suppressed).items():
            # Only once something was held back: no zero series beside every dangerous one.
            exempt = self.allowlist.allows(identity) or self._is_own_workload(identity)
            if value and not exempt:
                family.add((*identity, name), value)
        return family

    def _by_name(self, series: Series) -> dict[tuple[Identity, str], int]:
        """Kernel keys -> syscall names: an i386 and a native ptrace are one series."""
        named: dict[tuple[Identity, str], int] = defaultdict(int)
        for (identity, key), value in series.items():
            named[(identity, self.syscall_name(key))] += value
        return named

    def _ring_buffer_families(self) -> list[MetricFamily]:
        probe = (self.name,)
        values = {
            i: self._loaded_maps.percpu_values("ringbuf_stats", i)
            for i in (RB_WRITTEN, RB_DROPPED, RB_SAMPLED, RB_PEAK)
        }
        # The kernel keeps the peak since it was last zeroed; collects also run
        # for housekeeping and OTLP pushes, so keep the highest of the last
        # PEAK_WINDOW seconds here rather than only what came since the last
        # collect (a burst between a housekeeping tick and a scrape is not lost).
        self._loaded_maps.zero("ringbuf_stats", RB_PEAK)
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
                "events_total + drops_total + evidence suppressed = dangerous calls.",
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
            slot = self._loaded_maps.pop(SLOT_MAP, key.tobytes())
            if slot is None:
                continue
            self._loaded_maps.zero("syscall_counts", slot)
            self._loaded_maps.push("syscall_free_slots", slot)
        keys, values = dangerous
        for key, (count, suppressed) in zip(keys, values.tolist(), strict=True):
            cgroup_id = int(key["cgroup_id"])
            if cgroup_id in retiring:
                series_key = (identities[cgroup_id], int(key["nr"]))
                self._carried_dangerous.add(series_key, count)
                self._carried_suppressed.add(series_key, suppressed)
                self._loaded_maps.delete(DANGEROUS_MAP, key.tobytes())
        self.lifecycle.retired(retire)
        log.info("retired %d removed cgroup(s) from the syscall maps", len(retire))

    def _retire_idle_dangerous(
        self,
        keys: np.ndarray,
        values: np.ndarray,
        identities: dict[int, Identity],
        retired: set[int],
        now: float,
    ) -> None:
        """dangerous_counts is under pressure: free the entries of cgroups that
        still exist but made no dangerous call for the grace and hold no
        process (what an attacker leaves behind to keep the map full).

        Their final counts go to the carried counts, as for removed cgroups
        (the series continues; a later call starts a new entry). No process
        means no call between the atomic read-and-delete and the carry."""
        totals: dict[int, int] = defaultdict(int)
        for cgroup_id, count in zip(keys["cgroup_id"].tolist(), values[:, 0].tolist(), strict=True):
            if cgroup_id not in retired:
                totals[cgroup_id] += count
        idle = self._dangerous_idle
        for cgroup_id in [c for c in idle if c not in totals]:
            del idle[cgroup_id]
        candidates = []
        for cgroup_id, total in totals.items():
            seen = idle.get(cgroup_id)
            if seen is None or seen[0] != total:
                idle[cgroup_id] = (total, now)
            elif now - seen[1] >= self.lifecycle.deleted_grace:
                candidates.append(cgroup_id)
        candidates.sort(key=lambda c: idle[c][1])
        root, paths = self.resolver.tree.root, self.resolver.tree.paths
        empty = {c for c in candidates[:IDLE_CHECKS] if _is_empty(root, paths.get(c), c)}
        if not empty:
            return
        for key in keys:
            cgroup_id = int(key["cgroup_id"])
            if cgroup_id not in empty:
                continue
            final = self._loaded_maps.take(DANGEROUS_MAP, key.tobytes(), 2)
            if final is None:
                continue
            series_key = (identities[cgroup_id], int(key["nr"]))
            self._carried_dangerous.add(series_key, final[0])
            self._carried_suppressed.add(series_key, final[1])
        for cgroup_id in empty:
            del idle[cgroup_id]
        log.info(
            "dangerous_counts over %d%% full: freed the entries of %d empty, idle cgroup(s)",
            PRESSURE * 100,
            len(empty),
        )


def _is_empty(root: Path, path: str | None, cgroup_id: int) -> bool:
    """True if the cgroup at `path` (relative to root) is still `cgroup_id`
    and holds no process, in it or below it (cgroup.events)."""
    if path is None:
        return False
    directory = root / path.lstrip("/")
    try:
        if directory.stat().st_ino != cgroup_id:
            return False  # an escaped label, or the path was reused
        events = (directory / "cgroup.events").read_text()
    except (OSError, ValueError):
        return False
    return "populated 0" in events.splitlines()


def syscall_flags(
    tables: dict[int, dict[int, str]], dangerous: set[str], native: dict[str, int]
) -> dict[int, int]:
    """syscall_flags entries (bpf/syscalls.c), index = ABI * NR_TABLE + number.

    FLAG_ABI_SENSITIVE marks the native numbers whose i386 call is a
    dangerous syscall of another name: the tp_btf hook never counts those
    without reading the compat flag (a caller can forge the registers that
    let it skip the read), so a forged i386 call can only be misnamed as a
    native call of the same number when its i386 name is not dangerous."""
    flags: dict[int, int] = {}
    for abi, table in tables.items():
        for nr, name in table.items():
            if nr >= NR_TABLE:
                raise kernel.ProbeError(f"syscall {name} ({nr}) is beyond the kernel table")
            value = FLAG_KNOWN
            if name in dangerous:
                # Counted under its native number, whatever the ABI: one
                # dangerous_counts entry per (cgroup, name).
                value |= FLAG_DANGEROUS | native[name] << NATIVE_SHIFT
            flags[abi * NR_TABLE + nr] = value
    for nr, name in tables.get(I386, {}).items():
        if name in dangerous and tables[0].get(nr) != name:
            flags[nr] = flags.get(nr, 0) | FLAG_ABI_SENSITIVE
    return flags


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
