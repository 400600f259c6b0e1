"""Network traffic, flows and TCP health per cgroup, counted in the kernel.

Hook: cgroup_skb ingress + egress programs and a sock_ops program, all
attached to the cgroup v2 root (bpf/network.c), so they see every socket of
every cgroup, in every network namespace. Packets are attributed with
bpf_skb_cgroup_id(): the cgroup of the *socket* (set when it was created),
which is right in both directions; bpf_get_current_cgroup_id() is not
(receive processing and TCP ACKs run in softirq on behalf of whichever task
is on the CPU, on a veth usually the peer). sock_ops callbacks run in
softirq/timer context and may use neither bpf_skb_cgroup_id nor
bpf_sk_cgroup_id, so the cgroup_skb programs record each TCP socket's
cgroup in socket storage when its SYN passes (egress SYN: the connecting
socket; ingress SYN: the listener, whose record accepted sockets inherit
through BPF_F_CLONE) and sock_ops reads it from there. Programs are
attached with BPF links where the kernel has them (5.7+; the kernel detaches
them when orb8's file descriptors close, even if orb8 is killed), else with
BPF_PROG_ATTACH + BPF_F_ALLOW_MULTI and detached in close(). Both coexist
with other programs on the root cgroup. summary() reports the variant.

Metrics: orb8_network_bytes_total / orb8_network_packets_total
{namespace,pod,container,cgroup,direction,protocol,family} (exact: a per-CPU
hash per (cgroup, direction, protocol, family)); orb8_tcp_connections_opened_total
{...,role}, orb8_tcp_resets_total{...,direction},
orb8_tcp_retransmits_total{...}; orb8_flow_bytes_total /
orb8_flow_packets_total {...,direction,protocol,peer_namespace,peer_pod,
peer_class} and orb8_active_flows{...} from an LRU flow map; and
orb8_bpf_map_entries / _capacity / _update_failures_total /
_evictions_total for map=network_traffic, network_tcp, network_flows.

Overhead: per packet two 20-40 byte header loads (plus 2 bytes of a TCP
header, plus one per IPv6 extension header), one per-CPU hash update and one
LRU hash update with two atomic adds; a GSO/GRO super-packet is one program
run for up to 64 KiB. See benchmarks/RESULTS.md (network_overhead). A
collect batch-reads three maps and walks the flow entries in Python: about
a millisecond per thousand flows.

Caveats:
  - Bytes are IP-layer bytes (IP header included, link layer excluded).
    A GSO/GRO super-packet counts as its gso_segs wire packets and the bytes
    they carry (its length plus the repeated IP + L4 headers). A datagram
    the kernel fragments counts as one packet of its full length (the hooks
    run before fragmentation and after reassembly).
  - Only traffic of sockets is seen: forwarded/bridged traffic and packets
    a socket never sees (dropped before socket lookup, or sent by the
    kernel without a socket of the workload) are not counted. Ingress is
    counted when the packet reaches the socket's cgroup filter, before TCP
    or UDP accept it (so a datagram later dropped for a full receive buffer
    is counted).
  - Resets: counted from the RST flag of segments a workload's socket sends
    or receives. A RST the kernel sends on its own (closed port, TIME-WAIT)
    leaves from a kernel control socket, not the workload's: on IPv4 that
    is a per-CPU socket of the root cgroup, so it counts under cgroup="/"
    (checked on 6.18 with the network namespace created from another
    cgroup); on IPv6 the reply carries no socket and no cgroup program sees
    it. Either way the refused client counts a received reset and the
    server pod no sent reset.
  - Connections opened and retransmits are seen for sockets whose
    handshake completes after orb8 attached (sock_ops callbacks are
    switched on per socket at that point); a handshake that straddles the
    attach has no cgroup recorded and counts under cgroup="<unresolved>".
    SYN-ACK retransmits of a listener have no sock_ops callback and are not
    counted. Retransmits count segments like TcpRetransSegs does (a
    retransmission the device then refused included).
  - Flows are best effort: when network_flows is full the LRU evicts the
    least recently used entry and the traffic it counted since the previous
    collect is lost to the flow metrics (never to orb8_network_*).
    orb8_bpf_map_evictions_total counts those evictions exactly (inserts
    minus entries minus entries orb8 deleted itself).
  - A flow entry without traffic for `flow_idle_timeout` seconds is deleted
    (its counts carried in user space), so orb8_active_flows counts the
    (peer address, protocol, direction) entries with traffic in that window.
  - Peers (flows.py): a peer address is, in this order,
    `loopback`, `node` (an address of this node, which hostNetwork pods
    share), `pod` (exactly one known pod has it, from PodInfo.ips),
    `cluster` (inside `cluster_cidrs`) or `external`; never a raw IP. At
    most `peer_limit` peer pods per workload get their own series (a slot
    goes to a new peer pod when one is free, the most bytes first, and is
    kept while that pod exists); the rest count under peer_class="other".
    A peer pod that is gone (deleted and expired from the pod watcher)
    frees its slot and its series is removed.
  - Counters never go backwards: counts of evicted, expired or relabelled
    flow entries and of retired cgroups are carried in user space, as in
    the syscalls source.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from exporter import kernel
from exporter.identity import Resolver
from exporter.kernel import compiler, headers
from exporter.kernel.attach import (
    ATTACH_CGROUP_EGRESS,
    ATTACH_CGROUP_INGRESS,
    ATTACH_CGROUP_SOCK_OPS,
    load_program,
)
from exporter.model import IDENTITY_LABELS, Identity, MetricFamily, counter
from exporter.rows import Interner, RowFamily, RowTable
from exporter.selfmetrics import program_families
from exporter.sources.cgroupprobe import CgroupProbeSource, check_capacities
from exporter.sources.lifecycle import CarriedCounts, CgroupLifecycle
from exporter.sources.mapstats import MapStats
from exporter.sources.network.flows import (
    FlowLedger,
    FlowRow,
    IPAddress,
    Peer,
    PodName,
    classify_peer,
    local_addresses,
    parse_cidrs,
    pod_ip_index,
)

log = logging.getLogger(__name__)

# Must match bpf/include/network.h.
DIRECTIONS = ("ingress", "egress")
PROTOCOLS = ("tcp", "udp", "icmp", "other")
FAMILIES = ("ipv4", "ipv6")
TCP_OPENED_CLIENT, TCP_OPENED_SERVER, TCP_RST_SENT, TCP_RST_RECEIVED, TCP_RETRANSMIT = range(5)
STAT_TRAFFIC_FAILURES, STAT_TCP_FAILURES, STAT_FLOW_INSERTS, STAT_FLOW_FAILURES = range(4)

TRAFFIC_MAP, TCP_MAP, FLOW_MAP = "network_traffic", "network_tcp", "network_flows"
ATTACH_INGRESS, ATTACH_EGRESS, ATTACH_SOCK_OPS = (
    ATTACH_CGROUP_INGRESS,
    ATTACH_CGROUP_EGRESS,
    ATTACH_CGROUP_SOCK_OPS,
)
NODE_IPS_MAX_AGE = 60.0
PEER_LABELS = ("peer_namespace", "peer_pod", "peer_class")
# Remote addresses whose class is remembered between collects (a few MiB at most).
PEER_CACHE_LIMIT = 65536


class NetworkSource(CgroupProbeSource):
    name = "network"

    def __init__(
        self,
        resolver: Resolver,
        traffic_entries: int = 16384,
        flow_entries: int = 16384,
        tcp_entries: int = 8192,
        peer_limit: int = 16,
        flow_idle_timeout: float = 300.0,
        deleted_grace: float = 60.0,
        deleted_pod_grace: float | None = None,
        node_ips: Iterable[str] | None = None,
        cluster_cidrs: Iterable[str] = (),
        headers: headers.KernelHeaders | None = None,
        bpf_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        cgroup_root: Path | None = None,
        tcp_hook: str = "auto",
        attach: str = "auto",
        proc_net: Path = Path("/proc/net"),
    ) -> None:
        """tcp_hook: "auto" | "sock_ops" | "none" (RSTs only); attach: "auto" |
        "link" | "prog_attach". Forcing a variant is for tests; "auto" probes."""
        check_capacities(
            traffic_entries=traffic_entries, flow_entries=flow_entries, tcp_entries=tcp_entries
        )
        if peer_limit < 0:
            raise ValueError(f"peer_limit must be >= 0, got {peer_limit}")
        if flow_idle_timeout <= 0:
            raise ValueError(f"flow_idle_timeout must be > 0, got {flow_idle_timeout}")
        if tcp_hook not in ("auto", "sock_ops", "none"):
            raise ValueError(f"tcp_hook must be auto, sock_ops or none, got {tcp_hook!r}")
        self.resolver = resolver
        self.traffic_entries = traffic_entries
        self.flow_entries = flow_entries
        self.tcp_entries = tcp_entries
        self.peer_limit = peer_limit
        self.flow_idle_timeout = flow_idle_timeout
        self.lifecycle = CgroupLifecycle(resolver, deleted_grace, deleted_pod_grace)
        self.cluster = parse_cidrs(cluster_cidrs)
        self._fixed_node_ips = None if node_ips is None else _parse_ips(node_ips)
        self.headers = headers
        self.bpf_dir = bpf_dir
        self.clock = clock
        self.cgroup_root = cgroup_root
        self.requested_tcp_hook = tcp_hook
        self.proc_net = proc_net
        self.tcp_hook = ""
        super().__init__(attach)
        self._reset_state()

    def _reset_state(self) -> None:
        # Exact counters of retired cgroups: the shared carry rule
        # (exporter/sources/lifecycle.py).
        self._traffic_carried = CarriedCounts()
        self._traffic_rows = _Rows()
        self._flow_rows = _FlowRows()
        self._tcp_carried = CarriedCounts()
        self._ledger = FlowLedger(self.peer_limit, self.flow_idle_timeout)
        self._evictions = 0
        self._node_ips: set[IPAddress] = set()
        self._node_ips_at = float("-inf")
        self._pods_snapshot: Any = None
        self._pod_index: dict[IPAddress, PodName] = {}
        self._pod_names: set[PodName] = set()
        self._peer_cache: dict[IPAddress, Peer] = {}
        self._peer_generation = 0  # bumped when the cache is cleared

    def summary(self) -> str:
        return (
            f"hook=cgroup_skb tcp={self.tcp_hook or 'none'} attach={self.attach_mode or 'none'} "
            f"traffic_entries={self.traffic_entries} flow_entries={self.flow_entries} "
            f"tcp_entries={self.tcp_entries} peer_limit={self.peer_limit}"
        )

    # --- lifecycle ----------------------------------------------------------

    def _compile_variant(self, sock_ops: bool) -> Any:
        return compiler.compile_probe(
            "network",
            {
                "TRAFFIC_CAPACITY": self.traffic_entries,
                "TCP_CAPACITY": self.tcp_entries,
                "FLOW_CAPACITY": self.flow_entries,
                "TCP_SOCK_OPS": int(sock_ops),
            },
            self.headers,
            self.bpf_dir,
        )

    def _programs_of(self, bpf: Any, sock_ops: bool) -> list[tuple[Any, int]]:
        programs = [
            (load_program(bpf, "network_ingress", "cgroup_skb"), ATTACH_INGRESS),
            (load_program(bpf, "network_egress", "cgroup_skb"), ATTACH_EGRESS),
        ]
        if sock_ops:
            programs.append((load_program(bpf, "network_sockops", "sock_ops"), ATTACH_SOCK_OPS))
        return programs

    def _compile(self) -> Any:
        """Compile and load; falls back to RSTs only without sock_ops/socket storage."""
        errors = []
        if self.requested_tcp_hook == "auto":
            variants = [True, False]
        else:
            variants = [self.requested_tcp_hook == "sock_ops"]
        for sock_ops in variants:
            bpf = None
            try:
                bpf = self._compile_variant(sock_ops)
                # Loaded here, so that a variant the verifier refuses falls back.
                self._programs_of(bpf, sock_ops)
            except Exception as e:
                if bpf is not None:
                    bpf.cleanup()
                errors.append(f"{'sock_ops' if sock_ops else 'resets only'}: {e}")
                continue
            self.tcp_hook = "sock_ops" if sock_ops else "none"
            if errors:
                log.warning("network probe without sock_ops (%s)", errors[0])
            return bpf
        raise kernel.ProbeError("loading network probe failed: " + "; ".join(errors))

    def _programs(self, bpf: Any) -> list[tuple[Any, int]]:
        # Loaded by _compile already: BCC hands back the same programs.
        return self._programs_of(bpf, self.tcp_hook == "sock_ops")

    # --- reading the kernel -------------------------------------------------

    def _read_flows(self) -> tuple[list[FlowRow], set[int]]:
        """Every entry of the flow map, and the cgroup ids among them."""
        keys, counts = self._loaded_maps.read_hash(FLOW_MAP, self.flow_entries, 2)
        cgroup_ids = keys["cgroup_id"].tolist()
        rows = list(
            zip(
                [key.tobytes() for key in keys],
                cgroup_ids,
                [key["addr"].tobytes() for key in keys],
                keys["family"].tolist(),
                keys["protocol"].tolist(),
                keys["direction"].tolist(),
                counts[:, 0].tolist(),
                counts[:, 1].tolist(),
                strict=True,
            )
        )
        return rows, set(cgroup_ids)

    def _delete_flow(self, raw: bytes) -> tuple[int, int] | None:
        """Delete a flow entry; its final counts (one atomic step), None if already gone."""
        counts = self._loaded_maps.take(FLOW_MAP, raw, 2)
        return None if counts is None else (counts[0], counts[1])

    def _stats(self) -> list[int]:
        return [self._loaded_maps.percpu_sum("network_stats", i) for i in range(4)]

    # --- identity and peers -------------------------------------------------

    def _refresh_peers(self, now: float) -> None:
        pods = self.resolver.pods()
        if pods is not self._pods_snapshot:
            # A new snapshot comes with any pod event; classifications only
            # change with pod addresses or the set of pods.
            self._pods_snapshot = pods
            index = pod_ip_index(pods)
            names = {(p.namespace, p.name) for p in pods.values()}
            if index != self._pod_index or names != self._pod_names:
                self._pod_index, self._pod_names = index, names
                self._clear_peers()
        if self._fixed_node_ips is not None:
            if self._node_ips is not self._fixed_node_ips:
                self._node_ips = self._fixed_node_ips  # type: ignore[assignment]
                self._clear_peers()
        elif now - self._node_ips_at >= NODE_IPS_MAX_AGE:
            self._node_ips_at = now
            addresses = local_addresses(self.proc_net)
            if addresses != self._node_ips:
                self._node_ips = addresses
                self._clear_peers()

    def _clear_peers(self) -> None:
        self._peer_cache.clear()
        self._peer_generation += 1

    def _classify(self, address: IPAddress) -> Peer:
        peer = self._peer_cache.get(address)
        if peer is None:
            if len(self._peer_cache) >= PEER_CACHE_LIMIT:
                # Addresses come from the outside world (a scan from many IPv6
                # sources): start over rather than grow; classifying is cheap.
                self._peer_cache.clear()
            peer = classify_peer(address, self._pod_index, self._node_ips, self.cluster)
            self._peer_cache[address] = peer
        return peer

    # --- collect ------------------------------------------------------------

    def collect(self) -> list[MetricFamily]:
        if self._maps is None:
            raise kernel.ProbeError("network probe is not loaded")
        now = self.clock()
        inserts_before = self._stats()[STAT_FLOW_INSERTS]
        traffic_keys, traffic = self._loaded_maps.read_hash(TRAFFIC_MAP, self.traffic_entries, 2)
        tcp_keys, tcp = self._loaded_maps.read_hash(TCP_MAP, self.tcp_entries, 1)
        flow_rows, flow_cgroups = self._read_flows()
        n_flows = len(flow_rows)
        stats = self._stats()
        self.resolver.refresh()
        self._refresh_peers(now)

        cgroup_ids = (
            set(traffic_keys["cgroup_id"].tolist())
            | set(tcp_keys["cgroup_id"].tolist())
            | flow_cgroups
            | self._ledger.cgroups()
        )
        identities, retire = self.lifecycle.resolve(cgroup_ids, now)

        # Entries gone that orb8 did not delete were evicted by the LRU.
        # Inserts are read before the entries: a concurrent insert can only
        # make this low for one collect, never overshoot.
        self._evictions = max(self._evictions, inserts_before - n_flows - self._ledger.deleted)
        self._ledger.update(
            flow_rows,
            now,
            identities,
            self._classify,
            self._pod_names,
            self._delete_flow,
            self._peer_generation,
        )

        families = self._families(identities, traffic_keys, traffic, tcp_keys, tcp, n_flows, stats)
        if retire:
            self._retire(retire, identities, traffic_keys, traffic, tcp_keys, tcp)
        present = identities.values()
        self._traffic_carried.expire(present, now)
        self._tcp_carried.expire(present, now)
        return families

    # --- exposition ---------------------------------------------------------

    def _families(
        self,
        identities: dict[int, Identity],
        traffic_keys: np.ndarray,
        traffic: np.ndarray,
        tcp_keys: np.ndarray,
        tcp: np.ndarray,
        n_flows: int,
        stats: list[int],
    ) -> list[MetricFamily]:
        return [
            *self._traffic_families(identities, traffic_keys, traffic),
            *self._tcp_families(identities, tcp_keys, tcp),
            *self._flow_families(identities),
            *self._map_families(len(traffic_keys), len(tcp_keys), n_flows, stats),
            *program_families(self._loaded_maps.programs()),
        ]

    def _traffic_families(
        self, identities: dict[int, Identity], keys: np.ndarray, values: np.ndarray
    ) -> list[MetricFamily]:
        """orb8_network_{bytes,packets}_total: one set of rows (exporter/rows.py),
        kept between collects, coded (identity index, direction, protocol,
        family) from the read's arrays, as orb8_syscalls_total is."""
        present = set(identities.values())
        rows = self._traffic_rows
        if len(rows.identities) > 2 * len(present) + 1024:
            rows.identities.clear()  # renumbered: no row made under the old numbers survives
            rows.table.reset()
        known = np.fromiter(identities, dtype=np.uint64, count=len(identities))
        known.sort()
        idents = np.array([rows.identities(identities[c]) for c in known.tolist()], dtype=np.int64)
        codes = (idents[np.searchsorted(known, keys["cgroup_id"])] << 24) | _traffic_code(
            keys["direction"], keys["protocol"], keys["family"]
        )
        carried = self._traffic_carried.items(present)
        extra = np.array(
            [rows.identities(k[0]) << 24 | k[1] << 16 | k[2] << 8 | k[3] for k, _ in carried],
            dtype=np.int64,
        )
        counted = np.concatenate(
            [
                values.astype(np.uint64, copy=False).reshape(-1, 2),
                np.array([c for _, c in carried], np.uint64).reshape(-1, 2),
            ]
        )
        unique, inverse = np.unique(np.concatenate([codes, extra]), return_inverse=True)
        sums = np.zeros((len(unique), 2), dtype=np.uint64)
        np.add.at(sums, inverse, counted)
        layout = rows.table.update(unique, lambda new: _traffic_labels(rows.identities, new))
        labels = (*IDENTITY_LABELS, "direction", "protocol", "family")
        net_bytes = RowFamily(
            "orb8_network_bytes_total",
            "counter",
            "IP-layer bytes sent (egress) or received (ingress) by sockets of the cgroup.",
            labels,
            layout,
            sums[:, 0].astype(np.float64),
        )
        net_packets = RowFamily(
            "orb8_network_packets_total",
            "counter",
            "IP packets sent (egress) or received (ingress) by sockets of the cgroup.",
            labels,
            layout,
            sums[:, 1].astype(np.float64),
        )
        return [net_bytes, net_packets]

    def _tcp_families(
        self, identities: dict[int, Identity], keys: np.ndarray, values: np.ndarray
    ) -> list[MetricFamily]:
        series: dict[tuple[Identity, int], int] = defaultdict(int)
        for key, (count,) in self._tcp_carried.items(identities.values()):
            series[key] += count  # type: ignore[index]
        for cgroup_id, event, count in zip(
            keys["cgroup_id"].tolist(), keys["event"].tolist(), values[:, 0].tolist(), strict=True
        ):
            series[(identities[cgroup_id], event)] += count
        opened = counter(
            "orb8_tcp_connections_opened_total",
            "TCP connections of the cgroup's sockets that reached ESTABLISHED, by role.",
            (*IDENTITY_LABELS, "role"),
        )
        resets = counter(
            "orb8_tcp_resets_total",
            "TCP segments with RST sent (egress) or received (ingress) by the cgroup's sockets.",
            (*IDENTITY_LABELS, "direction"),
        )
        retransmits = counter(
            "orb8_tcp_retransmits_total",
            "TCP segments retransmitted by the cgroup's sockets.",
            IDENTITY_LABELS,
        )
        for (identity, event), count in series.items():
            if event == TCP_OPENED_CLIENT:
                opened.add((*identity, "client"), count)
            elif event == TCP_OPENED_SERVER:
                opened.add((*identity, "server"), count)
            elif event == TCP_RST_SENT:
                resets.add((*identity, "egress"), count)
            elif event == TCP_RST_RECEIVED:
                resets.add((*identity, "ingress"), count)
            elif event == TCP_RETRANSMIT:
                retransmits.add(identity, count)
        return [opened, resets, retransmits]

    def _flow_families(self, identities: dict[int, Identity]) -> list[MetricFamily]:
        """orb8_flow_{bytes,packets}_total and orb8_active_flows as rows
        (exporter/rows.py) kept between collects: coded (identity index,
        series index) from the ledger's sums, so a scrape renders only the
        flow series that changed."""
        series, active = self._ledger.series(identities)
        rows = self._flow_rows
        rows.prune(len(active), len(series))
        codes = np.fromiter(
            (rows.identities(identity) << 32 | rows.keys(key) for identity, key in series),
            dtype=np.int64,
            count=len(series),
        )
        counts = np.array(list(series.values()), dtype=np.float64).reshape(-1, 2)
        order = np.argsort(codes, kind="stable")
        layout = rows.table.update(codes[order], rows.labels_of)
        labels = (*IDENTITY_LABELS, "direction", "protocol", *PEER_LABELS)
        flow_bytes = RowFamily(
            "orb8_flow_bytes_total",
            "counter",
            "IP-layer bytes between the cgroup's sockets and a peer, by peer (best effort).",
            labels,
            layout,
            counts[order, 0],
        )
        flow_packets = RowFamily(
            "orb8_flow_packets_total",
            "counter",
            "IP packets between the cgroup's sockets and a peer, by peer (best effort).",
            labels,
            layout,
            counts[order, 1],
        )
        codes = np.fromiter(map(rows.identities, active), dtype=np.int64, count=len(active))
        order = np.argsort(codes, kind="stable")
        active_flows = RowFamily(
            "orb8_active_flows",
            "gauge",
            "Flow entries (peer address, protocol, direction) of the cgroup with recent traffic.",
            IDENTITY_LABELS,
            rows.active.update(
                codes[order], lambda new: [rows.identities.values[c] for c in new.tolist()]
            ),
            np.array(list(active.values()), dtype=np.float64)[order],
        )
        return [flow_bytes, flow_packets, active_flows]

    def _map_families(
        self, traffic: int, tcp: int, flows: int, stats: list[int]
    ) -> list[MetricFamily]:
        return self._bpf_map_families(
            [
                MapStats(TRAFFIC_MAP, traffic, self.traffic_entries, stats[STAT_TRAFFIC_FAILURES]),
                MapStats(TCP_MAP, tcp, self.tcp_entries, stats[STAT_TCP_FAILURES]),
                MapStats(
                    FLOW_MAP, flows, self.flow_entries, stats[STAT_FLOW_FAILURES], self._evictions
                ),
            ]
        )

    # --- retirement ---------------------------------------------------------

    def _retire(
        self,
        retire: list[int],
        identities: dict[int, Identity],
        traffic_keys: np.ndarray,
        traffic: np.ndarray,
        tcp_keys: np.ndarray,
        tcp: np.ndarray,
    ) -> None:
        """Free the kernel entries of removed cgroups once their grace is over.

        Final counts always go to the carried counts (the shared carry rule,
        exporter/sources/lifecycle.py). A socket can outlive its cgroup, so
        packets may still be counted between the collect's read and the
        delete: each entry is read and deleted in one atomic step, and its
        final value is what is carried. A later packet re-creates the entry,
        and the series continues from its carried counts.
        """
        retiring = set(retire)
        for row, cgroup_id, (nbytes, npackets) in self._take_retiring(
            TRAFFIC_MAP, traffic_keys, traffic, retiring, 2
        ):
            identity = identities[cgroup_id]
            key = (identity, int(row["direction"]), int(row["protocol"]), int(row["family"]))
            self._traffic_carried.add(key, nbytes, npackets)
        for row, cgroup_id, (count,) in self._take_retiring(TCP_MAP, tcp_keys, tcp, retiring, 1):
            self._tcp_carried.add((identities[cgroup_id], int(row["event"])), count)

        self._ledger.retire(retiring, identities, self._delete_flow)
        self.lifecycle.retired(retire)
        log.info("retired %d removed cgroup(s) from the network maps", len(retire))


class _Rows:
    """A family's rows and the identity numbering their codes use."""

    def __init__(self) -> None:
        self.identities: Interner[Identity] = Interner()
        self.table = RowTable()


FlowKey = tuple[int, int, Peer]  # (direction, protocol, peer): FlowLedger's series key


class _FlowRows:
    """The flow families' rows: codes (identity index << 32 | series key index),
    and orb8_active_flows' rows by identity index."""

    SLACK = 1024

    def __init__(self) -> None:
        self.identities: Interner[Identity] = Interner()
        self.keys: Interner[FlowKey] = Interner()
        self.table = RowTable()
        self.active = RowTable()

    def prune(self, identities: int, series: int) -> None:
        """Renumber when the interners hold many entries no longer in use
        (identities of deleted pods, peer pods gone): no row made under the
        old numbers survives."""
        if len(self.identities) > 2 * identities + self.SLACK or len(self.keys) > (
            2 * series + self.SLACK
        ):
            self.identities.clear()
            self.keys.clear()
            self.table.reset()
            self.active.reset()

    def labels_of(self, codes: np.ndarray) -> list[tuple[str, ...]]:
        identities, keys = self.identities.values, self.keys.values
        out = []
        for code in codes.tolist():
            direction, protocol, peer = keys[code & 0xFFFFFFFF]
            out.append(
                (
                    *identities[code >> 32],
                    _name(DIRECTIONS, direction),
                    _name(PROTOCOLS, protocol),
                    peer.namespace,
                    peer.pod,
                    peer.peer_class,
                )
            )
        return out


def _traffic_code(direction: np.ndarray, protocol: np.ndarray, family: np.ndarray) -> np.ndarray:
    return (
        direction.astype(np.int64) << 16 | protocol.astype(np.int64) << 8 | family.astype(np.int64)
    )


def _traffic_labels(identities: Interner[Identity], codes: np.ndarray) -> list[tuple[str, ...]]:
    return [
        (
            *identities.values[code >> 24],
            _name(DIRECTIONS, code >> 16 & 0xFF),
            _name(PROTOCOLS, code >> 8 & 0xFF),
            _name(FAMILIES, code & 0xFF),
        )
        for code in codes.tolist()
    ]


def _parse_ips(ips: Iterable[str]) -> set[IPAddress]:
    addresses: set[IPAddress] = set()
    for text in ips:
        try:
            addresses.add(ipaddress.ip_address(text.strip()))
        except ValueError:
            raise ValueError(f"invalid node IP {text!r}") from None
    return addresses


def _name(names: tuple[str, ...], index: int) -> str:
    return names[index] if 0 <= index < len(names) else "other"
