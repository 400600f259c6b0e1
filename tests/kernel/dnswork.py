"""DNS workloads for tests/kernel/test_dns.py: a responder with chosen
answers, delays and drops, a client, and a raw sender for malformed
messages, each run inside a pod's cgroup and network namespace.

    dnswork.py CGROUP_DIR NETNS serve ADDRESS...
    dnswork.py CGROUP_DIR NETNS ask SERVER udp|udp-ext|tcp WAIT NAME:QTYPE...
    dnswork.py CGROUP_DIR NETNS raw SERVER udp|tcp HEX...
    dnswork.py CGROUP_DIR NETNS loop SERVER SECONDS 0|1

The responder answers by the query name's first label: noerror (one A
record), nodata, nxdomain, servfail, refused, formerr, drop (no answer),
delayN (NOERROR after N milliseconds), big (400 A records, 6.4 kB, written
over TCP in 1000-byte pieces); any other name, or bytes that do not parse,
get no answer. `message` and `reference` are also imported by the
test (the messages it sends and a reference parser of the kernel's rules).
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from netpods import IPV6_EXTENSION, _enter, _family

RCODES = {"noerror": 0, "nodata": 0, "formerr": 1, "servfail": 2, "nxdomain": 3, "refused": 5}
QTYPES = {"A": 1, "AAAA": 28, "SRV": 33, "PTR": 12, "TXT": 16, "MX": 15}


def encode_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"


def message(qid: int, name: str, qtype: int, response: bool = False, rcode: int = 0) -> bytes:
    flags = (0x8180 | rcode) if response else 0x0100
    return (
        struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0)
        + encode_name(name)
        + struct.pack("!HH", qtype, 1)
    )


def reference(payload: bytes) -> tuple[str, int]:
    """What bpf/dns.c makes of a message: ("malformed", 0), ("query", qtype)
    or ("response", rcode)."""
    if len(payload) < 12:
        return "malformed", 0
    qr, rcode = payload[2] >> 7, payload[3] & 0x0F
    qdcount = (payload[4] << 8) | payload[5]
    if qdcount == 0:
        return ("response", rcode) if qr else ("malformed", 0)
    pos, name = 12, 0
    for _ in range(128):
        if pos >= len(payload):
            return "malformed", 0
        length = payload[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0:
            return "malformed", 0
        name += length + 1
        if name >= 255:
            return "malformed", 0
        pos += length + 1
    else:
        return "malformed", 0
    if pos + 4 > len(payload):
        return "malformed", 0
    return ("response", rcode) if qr else ("query", (payload[pos] << 8) | payload[pos + 1])


def _question(payload: bytes) -> tuple[str, int] | None:
    kind, qtype = reference(payload)
    if kind != "query":
        return None
    labels, pos = [], 12
    while payload[pos]:
        labels.append(payload[pos + 1 : pos + 1 + payload[pos]].decode(errors="replace"))
        pos += payload[pos] + 1
    return ".".join(labels), qtype


def answer(query: bytes) -> tuple[bytes, float] | None:
    """(answer, delay in seconds) for a query, None: no answer."""
    question = _question(query)
    if question is None:
        return None
    behaviour = question[0].split(".")[0]
    delay = 0.0
    if behaviour.startswith("delay"):
        delay, behaviour = int(behaviour[5:]) / 1000, "noerror"
    records = 1
    if behaviour == "big":  # an answer over several TCP segments
        behaviour, records = "noerror", 400
    if behaviour not in RCODES:
        return None
    end = 12 + len(encode_name(question[0])) + 4
    records = records if behaviour == "noerror" else 0
    header = struct.pack(
        "!HHHHHH", struct.unpack("!H", query[:2])[0], 0x8180 | RCODES[behaviour], 1, records, 0, 0
    )
    body = query[12:end]
    for i in range(records):
        body += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([198, 18, i >> 8, i & 255])
    return header + body, delay


def serve(*addresses: str) -> dict:
    udp, tcp = [], []
    for address in addresses:
        u = socket.socket(_family(address), socket.SOCK_DGRAM)
        u.bind((address, 53))
        t = socket.socket(_family(address), socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((address, 53))
        t.listen(64)
        udp.append(u)
        tcp.append(t)
    print(json.dumps({"ready": True}), flush=True)
    conns: list[socket.socket] = []
    while True:
        ready, _, _ = select.select(udp + tcp + conns, [], [])
        for s in ready:
            if s in udp:
                data, peer = s.recvfrom(65535)
                reply = answer(data)
                if reply:
                    time.sleep(reply[1])
                    s.sendto(reply[0], peer)
            elif s in tcp:
                conn, _ = s.accept()
                conns.append(conn)
            else:
                data = _read_message(s)
                if data is None:
                    conns.remove(s)
                    s.close()
                    continue
                reply = answer(data)
                if reply:
                    time.sleep(reply[1])
                    _send_in_pieces(s, struct.pack("!H", len(reply[0])) + reply[0])


def _send_in_pieces(s: socket.socket, data: bytes) -> None:
    """A long answer in 1000-byte writes a little apart: segments that start
    inside a message, as a busy server's or a slow network's would."""
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for start in range(0, len(data), 1000):
        s.sendall(data[start : start + 1000])
        if start + 1000 < len(data):
            time.sleep(0.02)


def _read_message(s: socket.socket) -> bytes | None:
    s.settimeout(2)
    try:
        prefix = _read_exactly(s, 2)
        if prefix is None:
            return None
        return _read_exactly(s, struct.unpack("!H", prefix)[0])
    except OSError:
        return None


def _read_exactly(s: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def ask(server: str, transport: str, wait: str, *questions: str) -> dict:
    """Each question in turn (new id each), waiting up to WAIT seconds for its answer."""
    answered: dict[str, int] = {}
    if transport in ("udp", "udp-ext"):
        s = socket.socket(_family(server), socket.SOCK_DGRAM)
        if transport == "udp-ext":  # every packet carries IPv6 extension headers
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, IPV6_EXTENSION)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, IPV6_EXTENSION)
        s.connect((server, 53))
    else:
        s = socket.create_connection((server, 53), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(float(wait))
    for qid, question in enumerate(questions, start=1):
        name, qtype = question.rsplit(":", 1)
        query = message(qid, name, QTYPES.get(qtype) or int(qtype))
        try:
            if transport != "tcp":
                s.send(query)
                reply = s.recv(65535)
            else:
                s.sendall(struct.pack("!H", len(query)) + query)  # one segment
                reply = (
                    _read_exactly(s, struct.unpack("!H", _read_exactly(s, 2) or b"\0\0")[0]) or b""
                )
        except TimeoutError:
            continue
        rcode = str(reply[3] & 0x0F)
        answered[rcode] = answered.get(rcode, 0) + 1
    s.close()
    return {"answered": answered}


def raw(server: str, transport: str, *payloads: str) -> dict:
    """Send each payload as one UDP datagram, or as one length-prefixed
    message on a TCP connection of its own."""
    for text in payloads:
        payload = bytes.fromhex(text)
        if transport == "udp":
            s = socket.socket(_family(server), socket.SOCK_DGRAM)
            s.sendto(payload, (server, 53))
        else:
            s = socket.create_connection((server, 53), timeout=10)
            s.sendall(struct.pack("!H", len(payload)) + payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            try:
                while s.recv(65535):
                    pass
            except OSError:
                pass
        s.close()
    return {"sent": len(payloads)}


def loop(server: str, seconds: str, malformed: str) -> dict:
    """For SECONDS, over and over: answered, NXDOMAIN, SERVFAIL and dropped
    queries (and a malformed message if MALFORMED is 1): steady DNS traffic
    for every panel of the DNS dashboard."""
    deadline = time.monotonic() + float(seconds)
    rounds = 0
    while time.monotonic() < deadline:
        ask(server, "udp", "0.1", "noerror.loop.test:A", "nxdomain.loop.test:AAAA")
        ask(server, "udp", "0.1", "servfail.loop.test:A", "drop.loop.test:A")
        if malformed == "1":
            raw(server, "udp", (b"\x00\x07\x01\x00\x00\x01" + b"\x00" * 6 + b"\xc0\x0c").hex())
        rounds += 1
        time.sleep(0.1)
    return {"rounds": rounds}


MODES = {"serve": serve, "ask": ask, "raw": raw, "loop": loop}

if __name__ == "__main__":
    cgroup, netns, mode, *args = sys.argv[1:]
    _enter(cgroup, netns)
    print(json.dumps({"done": True, **MODES[mode](*args)}), flush=True)
