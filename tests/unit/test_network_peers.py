"""Peer classification for flow series: procfs address parsers, the pod IP
index, precedence of classes, slot admission, flow key encoding."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from exporter.identity.kubernetes import PodInfo
from exporter.sources.network.flows import (
    CLUSTER,
    EXTERNAL,
    LOOPBACK,
    NODE,
    Peer,
    admit_peers,
    classify_peer,
    decode_address,
    local_addresses,
    parse_cidrs,
    parse_fib_trie_local,
    parse_if_inet6,
    pod_ip_index,
)
from tests.bpf_maps import FLOW_KEY, encode_flow_key

ip = ipaddress.ip_address

FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 10.0.0.0/24 2 0 2
        |-- 10.0.0.0
           /24 link UNICAST
        |-- 10.0.0.17
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.0.0.17
        /32 host LOCAL
     |-- 192.168.5.4
        /24 link UNICAST
        /32 host LOCAL
"""

IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
fd000000000000000000000000000002 04 40 00 82     eth0
garbage
"""


def test_fib_trie_yields_only_host_local_addresses():
    assert parse_fib_trie_local(FIB_TRIE) == {ip("127.0.0.1"), ip("10.0.0.17"), ip("192.168.5.4")}


@pytest.mark.parametrize("text", ["", "Main:\n", "  |-- not-an-address\n     /32 host LOCAL\n"])
def test_fib_trie_tolerates_empty_and_malformed_text(text):
    assert parse_fib_trie_local(text) == set()


def test_if_inet6_yields_every_address():
    assert parse_if_inet6(IF_INET6) == {ip("::1"), ip("fe80::fc:ff:fe00:1"), ip("fd00::2")}


def test_local_addresses_reads_both_files(tmp_path):
    (tmp_path / "fib_trie").write_text(FIB_TRIE)
    (tmp_path / "if_inet6").write_text(IF_INET6)
    assert ip("10.0.0.17") in local_addresses(tmp_path)
    assert ip("fd00::2") in local_addresses(tmp_path)


def test_local_addresses_without_procfs_is_empty(tmp_path):
    assert local_addresses(tmp_path / "missing") == set()


def pod(name: str, *ips: str, namespace: str = "shop", deleted: bool = False) -> PodInfo:
    return PodInfo(
        uid=f"uid-{name}-{len(ips)}-{deleted}",
        namespace=namespace,
        name=name,
        node="n",
        containers={},
        all_started=True,
        ips=ips,
        deleted_at=1.0 if deleted else None,
    )


def index_of(*pods: PodInfo):
    return pod_ip_index({p.uid: p for p in pods})


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        ([pod("a", "10.1.0.5", "fd00::5")], {"10.1.0.5": "a", "fd00::5": "a"}),
        # two live pods on one address (hostNetwork): not a pod address
        ([pod("a", "10.0.0.17"), pod("b", "10.0.0.17")], {}),
        # a live pod wins over a deleted one that still holds its old address
        ([pod("old", "10.1.0.9", deleted=True), pod("new", "10.1.0.9")], {"10.1.0.9": "new"}),
        ([pod("old", "10.1.0.9", deleted=True)], {"10.1.0.9": "old"}),
        ([pod("bad", "not-an-ip", "10.1.0.3")], {"10.1.0.3": "bad"}),
        ([pod("none")], {}),
    ],
)
def test_pod_ip_index(pods, expected):
    index = index_of(*pods)
    assert {str(address): name for address, (_, name) in index.items()} == expected


NODE_IPS = {ip("10.0.0.17"), ip("fd00::17")}
CLUSTER_NETS = parse_cidrs(["10.0.0.0/16", "fd00::/64"])
PODS = index_of(pod("web", "10.0.3.4", "fd00::3:4"), pod("db", "10.0.0.17"))


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", LOOPBACK),
        ("127.9.9.9", LOOPBACK),
        ("::1", LOOPBACK),
        ("::ffff:127.0.0.1", LOOPBACK),
        ("10.0.3.4", Peer("pod", "shop", "web")),
        ("fd00::3:4", Peer("pod", "shop", "web")),
        ("::ffff:10.0.3.4", Peer("pod", "shop", "web")),
        # the node's own address beats a (hostNetwork) pod that claims it
        ("10.0.0.17", NODE),
        ("fd00::17", NODE),
        ("10.0.200.1", CLUSTER),
        ("fd00::99", CLUSTER),
        ("10.1.0.1", EXTERNAL),
        ("198.51.100.7", EXTERNAL),
        ("2001:db8::1", EXTERNAL),
    ],
)
def test_classify_peer(address, expected):
    assert classify_peer(ip(address), PODS, NODE_IPS, CLUSTER_NETS) == expected


def test_parse_cidrs_names_the_bad_one():
    assert [str(n) for n in parse_cidrs([" 10.0.0.0/8", "fd00::/8"])] == ["10.0.0.0/8", "fd00::/8"]
    assert [str(n) for n in parse_cidrs(["10.1.2.3/16"])] == ["10.1.0.0/16"]  # host bits ok
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33'"):
        parse_cidrs(["10.0.0.0/33"])


@pytest.mark.parametrize(
    ("named", "candidates", "limit", "admitted", "after"),
    [
        ([], {"a": 5, "b": 9, "c": 1}, 2, ["b", "a"], ["b", "a"]),
        (["x"], {"a": 5, "b": 9, "x": 100}, 2, ["b"], ["x", "b"]),
        (["x", "y"], {"a": 5}, 2, [], ["x", "y"]),
        ([], {"a": 5, "b": 5}, 1, ["a"], ["a"]),  # ties: by name, deterministic
        ([], {"a": 5}, 0, [], []),
    ],
)
def test_admit_peers(named, candidates, limit, admitted, after):
    slots = {("ns", n): None for n in named}
    got = admit_peers(slots, {("ns", n): c for n, c in candidates.items()}, limit)
    assert got == [("ns", n) for n in admitted]
    assert list(slots) == [("ns", n) for n in after]


@pytest.mark.parametrize(
    "address", ["198.18.0.1", "0.0.0.0", "255.255.255.255", "fd00::1", "::", "ff02::16"]
)
def test_flow_key_round_trip(address):
    raw = encode_flow_key(7, ip(address), protocol=1, direction=1)
    assert len(raw) == FLOW_KEY.itemsize == 32
    key = np.frombuffer(raw, dtype=FLOW_KEY)[0]
    assert (int(key["cgroup_id"]), int(key["protocol"]), int(key["direction"])) == (7, 1, 1)
    assert decode_address(int(key["family"]), raw[8:24]) == ip(address)
