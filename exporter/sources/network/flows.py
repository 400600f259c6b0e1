"""Flow bookkeeping for the network source: peers and monotonic flow counters.

Pure Python, no BPF: the network source feeds it what it read from the
kernel's LRU flow map (bpf/network.c, `network_flows`) and hands it a
`delete` function; the unit tests feed it tables.

Peers. A flow's peer address is classified, in this order of precedence:
`loopback`; `node` (an address of this node: its own traffic, and
hostNetwork pods, which share the node's addresses); `pod` when exactly one
known pod has the address (PodInfo.ips; a live pod wins over a deleted one
that still holds it); `cluster` (inside a configured cluster CIDR);
`external`. A raw IP never becomes a label.

Bounded series. Each workload (identity) names at most `peer_limit` peer
pods; the rest are counted under peer_class="other". A slot is given to a
new peer pod the first time it is seen with a slot free (the most bytes
first when several arrive in one collect) and kept while that pod exists;
when the pod is gone (deleted and expired from the pod watcher) the slot is
freed and its series removed. Non-pod classes need no cap (five values).

Monotonic counters. The kernel map is an LRU, and orb8 itself deletes
entries that stay idle and entries of retired cgroups; an entry can also
change labels (a peer admitted to a slot, a pod deleted, an address reused).
Each kernel entry is therefore tracked with a base: what it counted under
earlier labels. Whatever an entry counted under a label is carried in user
space when the entry goes away or changes labels, per cgroup (so it follows
the cgroup's identity like the kernel-held counts do) and, once a cgroup is
retired, per identity. Series only ever grow, except series of peers that
are gone, which are removed.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from exporter.model import UNRESOLVED, Identity
from exporter.sources.lifecycle import CarriedCounts

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Peer(NamedTuple):
    """The peer labels of a flow series."""

    peer_class: str  # pod | node | cluster | external | loopback | other
    namespace: str = ""
    pod: str = ""


OTHER = Peer("other")
LOOPBACK = Peer("loopback")
NODE = Peer("node")
CLUSTER = Peer("cluster")
EXTERNAL = Peer("external")

PodName = tuple[str, str]  # (namespace, pod)
SeriesKey = tuple[int, int, Peer]  # (direction, protocol, peer)


# --- addresses -------------------------------------------------------------


def decode_address(family: int, addr: bytes) -> IPAddress:
    """The peer address of a flow key: family 0 = IPv4 in the first 4 bytes."""
    if family == 0:
        return ipaddress.IPv4Address(bytes(addr[:4]))
    return ipaddress.IPv6Address(bytes(addr[:16]))


def parse_fib_trie_local(text: str) -> set[ipaddress.IPv4Address]:
    """This host's IPv4 addresses, from /proc/net/fib_trie ("/32 host LOCAL" leaves)."""
    found: set[ipaddress.IPv4Address] = set()
    last: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            last = stripped[3:].strip()
        elif stripped.startswith("/32 host LOCAL") and last is not None:
            try:
                found.add(ipaddress.IPv4Address(last))
            except ValueError:
                continue
    return found


def parse_if_inet6(text: str) -> set[ipaddress.IPv6Address]:
    """This host's IPv6 addresses, from /proc/net/if_inet6 (32 hex digits first)."""
    found: set[ipaddress.IPv6Address] = set()
    for line in text.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            try:
                found.add(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
            except ValueError:
                continue
    return found


def local_addresses(proc_net: Path = Path("/proc/net")) -> set[IPAddress]:
    """Addresses of orb8's network namespace: the node's, as a hostNetwork DaemonSet."""
    addresses: set[IPAddress] = set()
    for name, parse in (("fib_trie", parse_fib_trie_local), ("if_inet6", parse_if_inet6)):
        try:
            addresses |= parse((proc_net / name).read_text())
        except OSError as e:
            log.warning("cannot read %s: %s", proc_net / name, e.strerror)
    return addresses


def parse_cidrs(cidrs: Iterable[str]) -> list[IPNetwork]:
    """ip_network for each CIDR; ValueError naming the bad one."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"invalid cluster CIDR {cidr!r}: {e}") from None
    return networks


def pod_ip_index(pods: Mapping[str, Any]) -> dict[IPAddress, PodName]:
    """{address: (namespace, pod)} for addresses exactly one pod has.

    A live pod wins over deleted ones that still hold the address; an
    address several pods share (hostNetwork pods carry the node's) is left
    out: it does not identify a pod.
    """
    live: dict[IPAddress, set[PodName]] = defaultdict(set)
    deleted: dict[IPAddress, set[PodName]] = defaultdict(set)
    for pod in pods.values():
        for text in pod.ips:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            target = deleted if pod.deleted_at is not None else live
            target[address].add((pod.namespace, pod.name))
    index: dict[IPAddress, PodName] = {}
    for address in live.keys() | deleted.keys():
        owners = live.get(address) or deleted[address]
        if len(owners) == 1:
            index[address] = next(iter(owners))
    return index


def classify_peer(
    address: IPAddress,
    pods: Mapping[IPAddress, PodName],
    node_ips: set[IPAddress],
    cluster: list[IPNetwork],
) -> Peer:
    """loopback, node, pod, cluster or external, in that order of precedence."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return LOOPBACK
    if address in node_ips:
        return NODE
    owner = pods.get(address)
    if owner is not None:
        return Peer("pod", owner[0], owner[1])
    if any(address.version == net.version and address in net for net in cluster):
        return CLUSTER
    return EXTERNAL


def admit_peers(named: dict[PodName, None], candidates: Mapping[PodName, int], limit: int) -> list:
    """Give free slots to new peer pods, the most bytes first; returns those admitted.

    `named` (insertion-ordered) is updated in place; slots are only freed by
    the caller, when a peer pod is gone.
    """
    free = limit - len(named)
    if free <= 0:
        return []
    new = sorted((-count, peer) for peer, count in candidates.items() if peer not in named)
    admitted = [peer for _, peer in new[:free]]
    for peer in admitted:
        named[peer] = None
    return admitted


# --- the ledger ------------------------------------------------------------


@dataclass
class Flow:
    """User-space view of one kernel flow entry."""

    cgroup_id: int
    direction: int
    protocol: int
    address: IPAddress
    label: Peer | None = None  # the peer labels its counts go to
    peer: Peer | None = None  # what its address is (label before the peer limit)
    base_bytes: int = 0  # counted under earlier labels (already carried)
    base_packets: int = 0
    last_bytes: int = 0  # the entry's counters at the last collect
    last_packets: int = 0
    changed_at: float = 0.0


# (raw key, cgroup id, family, protocol, direction, bytes, packets)
# (raw key, cgroup id, address bytes, family, protocol, direction, bytes, packets):
# struct flow_key of bpf/include/network.h, decoded by the source.
FlowRow = tuple[bytes, int, bytes, int, int, int, int, int]
# Deletes a kernel entry; its final (bytes, packets), or None if it was gone.
Deleter = Callable[[bytes], tuple[int, int] | None]


def _add(store: dict, key: Any, nbytes: int, npackets: int) -> None:
    entry = store.setdefault(key, [0, 0])
    entry[0] += nbytes
    entry[1] += npackets


class FlowLedger:
    def __init__(self, peer_limit: int, idle_timeout: float) -> None:
        self.peer_limit = peer_limit
        self.idle_timeout = idle_timeout
        self.flows: dict[bytes, Flow] = {}
        self.carried: dict[int, dict[SeriesKey, list[int]]] = {}
        # Counts of retired cgroups, per (identity, series): the shared carry rule.
        self.carried_identity = CarriedCounts()
        self.named: dict[Identity, dict[PodName, None]] = {}
        self.deleted = 0  # entries removed through a Deleter
        self.vanished = 0  # entries that disappeared without orb8 (LRU evictions)
        self._generation: object = None

    def cgroups(self) -> set[int]:
        """Cgroups with carried counts: they need identities even without kernel entries."""
        return set(self.carried)

    def update(
        self,
        rows: Iterable[FlowRow],
        now: float,
        identities: Mapping[int, Identity],
        classify: Callable[[IPAddress], Peer],
        pods: set[PodName],
        delete: Deleter,
        generation: object = None,
    ) -> None:
        """Take in one read of the kernel map.

        identities: every cgroup id in rows and in cgroups(); pods: the
        (namespace, name) of every pod that still exists; generation:
        changes whenever classify's answers may have (new pod snapshot,
        node addresses): until then each flow is classified only once.
        """
        if generation != self._generation or generation is None:
            self._generation = generation
            for known in self.flows.values():
                known.peer = None
        seen: set[bytes] = set()
        for raw, cgroup_id, addr, family, protocol, direction, nbytes, npackets in rows:
            seen.add(raw)
            flow = self.flows.get(raw)
            if flow is None:
                address = decode_address(family, addr)
                flow = self.flows[raw] = Flow(
                    cgroup_id, direction, protocol, address, changed_at=now
                )
            elif nbytes != flow.last_bytes or npackets != flow.last_packets:
                flow.changed_at = now
            flow.last_bytes, flow.last_packets = nbytes, npackets

        # Gone without orb8 deleting it: the LRU evicted it. What it counted
        # since the previous read is lost to the flow metrics.
        for raw in [raw for raw in self.flows if raw not in seen]:
            self._carry(self.flows.pop(raw))
            self.vanished += 1

        for flow in self.flows.values():
            if flow.peer is None:
                flow.peer = classify(flow.address)
        self._label(identities, pods)
        self._expire(now, delete)
        self.carried_identity.expire(identities.values(), now)

    def _label(self, identities: Mapping[int, Identity], pods: set[PodName]) -> None:
        gone = self._free_slots(pods)
        self._keep_carried_slots(identities, pods)
        self._admit(identities)
        for flow in self.flows.values():
            label = flow.peer
            assert label is not None
            if label.peer_class == "pod":
                named = self.named.get(identities[flow.cgroup_id], {})
                if (label.namespace, label.pod) not in named:
                    label = OTHER
            if flow.label != label:
                if flow.label is not None:
                    self._carry(flow, rebase=True)
                flow.label = label
        if gone:
            self._drop_peers(gone, identities)
        for identity in [identity for identity, named in self.named.items() if not named]:
            del self.named[identity]

    def _free_slots(self, pods: set[PodName]) -> dict[Identity, set[PodName]]:
        """Peers whose pod is gone free their slot (and their series go)."""
        gone: dict[Identity, set[PodName]] = {}
        for identity, named in self.named.items():
            stale = {pod for pod in named if pod not in pods}
            for pod in stale:
                del named[pod]
            if stale:
                gone[identity] = stale
        return gone

    def _keep_carried_slots(self, identities: Mapping[int, Identity], pods: set[PodName]) -> None:
        """A carried named series keeps its slot: folding it into "other"
        would make that series jump, and moving it back would shrink it."""
        for cgroup_id, carried in self.carried.items():
            named = self.named.setdefault(identities[cgroup_id], {})
            for _, _, peer in carried:
                pod = (peer.namespace, peer.pod)
                if peer.peer_class == "pod" and pod in pods:
                    named.setdefault(pod, None)

    def _admit(self, identities: Mapping[int, Identity]) -> None:
        candidates: dict[Identity, dict[PodName, int]] = defaultdict(lambda: defaultdict(int))
        for flow in self.flows.values():
            peer = flow.peer
            if peer is not None and peer.peer_class == "pod":
                pods = candidates[identities[flow.cgroup_id]]
                pods[(peer.namespace, peer.pod)] += flow.last_bytes
        for identity, pods in candidates.items():
            admit_peers(self.named.setdefault(identity, {}), pods, self.peer_limit)

    def _drop_peers(self, gone: dict[Identity, set[PodName]], identities: Mapping) -> None:
        def is_gone(identity: Identity, peer: Peer) -> bool:
            return peer.peer_class == "pod" and (peer.namespace, peer.pod) in gone.get(identity, ())

        for cgroup_id, carried in self.carried.items():
            identity = identities[cgroup_id]
            for series in [series for series in carried if is_gone(identity, series[2])]:
                del carried[series]
        self.carried_identity.discard(lambda key: is_gone(key[0], key[1][2]))

    def _carry(self, flow: Flow, rebase: bool = False, final: tuple[int, int] | None = None):
        """Carry what an entry counted under its current label.

        rebase: the entry lives on and counts from here under a new label.
        """
        nbytes, npackets = final or (flow.last_bytes, flow.last_packets)
        if flow.label is not None:
            _add(
                self.carried.setdefault(flow.cgroup_id, {}),
                (flow.direction, flow.protocol, flow.label),
                nbytes - flow.base_bytes,
                npackets - flow.base_packets,
            )
        if rebase:
            flow.base_bytes, flow.base_packets = nbytes, npackets

    def _remove(self, raw: bytes, delete: Deleter) -> None:
        flow = self.flows.pop(raw)
        final = delete(raw)
        if final is not None:
            self.deleted += 1
        self._carry(flow, final=final)

    def _expire(self, now: float, delete: Deleter) -> None:
        for raw in [
            raw for raw, flow in self.flows.items() if now - flow.changed_at >= self.idle_timeout
        ]:
            self._remove(raw, delete)

    def retire(
        self,
        cgroups: set[int],
        identities: Mapping[int, Identity],
        delete: Deleter,
    ) -> None:
        """Delete the entries of removed cgroups; their counts go to the carried
        counts (exporter/sources/lifecycle.py), where the series continues if
        its identity is, or comes back, in use."""
        for raw in [raw for raw, flow in self.flows.items() if flow.cgroup_id in cgroups]:
            self._remove(raw, delete)
        for cgroup_id in cgroups:
            carried = self.carried.pop(cgroup_id, {})
            identity = identities[cgroup_id]
            for (direction, protocol, peer), (nbytes, npackets) in carried.items():
                # <unresolved> gathers any number of cgroups: no named peers.
                if identity == UNRESOLVED and peer.peer_class == "pod":
                    peer = OTHER
                self.carried_identity.add((identity, (direction, protocol, peer)), nbytes, npackets)

    def series(
        self, identities: Mapping[int, Identity]
    ) -> tuple[dict[tuple[Identity, SeriesKey], list[int]], dict[Identity, int]]:
        """({(identity, (direction, protocol, peer)): [bytes, packets]},
        {identity: entries in the kernel map})."""
        totals: dict[tuple[Identity, SeriesKey], list[int]] = {}
        active: dict[Identity, int] = defaultdict(int)
        for key, (nbytes, npackets) in self.carried_identity.items(identities.values()):
            _add(totals, key, nbytes, npackets)
            active[key[0]] += 0
        for cgroup_id, carried in self.carried.items():
            identity = identities[cgroup_id]
            active[identity] += 0
            for series, (nbytes, npackets) in carried.items():
                _add(totals, (identity, series), nbytes, npackets)
        for flow in self.flows.values():
            identity = identities[flow.cgroup_id]
            active[identity] += 1
            assert flow.label is not None
            _add(
                totals,
                (identity, (flow.direction, flow.protocol, flow.label)),
                flow.last_bytes - flow.base_bytes,
                flow.last_packets - flow.base_packets,
            )
        return totals, dict(active)
