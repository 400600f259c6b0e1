"""The /metrics HTTP server before and after a change, in one run: scrape latency
and the server's CPU per request.

Two versions of exporter/outputs/http.py, the working tree's and the one at
--baseline (a git revision; by default the last one that parsed with
http.server, before h11), each serve the same fixed bodies in their own
process, plain and over TLS. The client alternates requests between the two,
so both see the same machine load, and reports per case the p50 latency
(connect to last byte), the server process's CPU per request (utime + stime
from /proc) and the ratio after/before. The bodies stand for a node of
1,000 containers x 50 syscalls (--series lines, ~7.5 MB; gzip level 1 as
orb8 sends it to Prometheus): the HTTP layer is what differs, so the
render is not in the measurement.

Usage: .venv/bin/python benchmarks/http_scrape.py [--rounds 31] [--baseline REV]
       [--results benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tls import make_pki  # noqa: E402

SERVE = r"""
import gzip, importlib.util, ssl, sys
spec = importlib.util.spec_from_file_location("orb8_http_under_test", sys.argv[1])
http = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # for its dataclasses
spec.loader.exec_module(http)
series, cert, key = int(sys.argv[2]), sys.argv[3], sys.argv[4]
line = ('orb8_syscalls_total{namespace="ns-%d",pod="pod-%d-7d9f8b6c5d-x2x9q",'
        'container="app",syscall="%s"} %d\n')
names = ("read", "write", "openat")
body = "".join(line % (i // 50, i // 50, names[i % 3], i * 7) for i in range(series)).encode()
zipped = gzip.compress(body, compresslevel=1)
text = "text/plain; version=0.0.4; charset=utf-8"

def metrics(request):
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        return http.Response(200, text, zipped, {"Content-Encoding": "gzip"})
    return http.Response(200, text, body)

def healthz(request):
    return http.Response(200, "text/plain; charset=utf-8", b"ok\n")

tls = None
if cert:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
server = http.BoundedHTTPServer(("127.0.0.1", 0), {"/metrics": metrics, "/healthz": healthz},
                                tls=tls, fast_paths=["/healthz"])
server.start()
print(server.address[1], len(body), len(zipped), flush=True)
sys.stdin.read()
server.close()
"""

CASES = [  # (name, path, gzip, tls, rounds multiplier)
    ("/metrics, identity (large body)", "/metrics", False, False, 1),
    ("/metrics, gzip (as Prometheus asks)", "/metrics", True, False, 1),
    ("/metrics, gzip, TLS", "/metrics", True, True, 1),
    ("/healthz (tiny body: parse and frame only)", "/healthz", False, False, 20),
]


def baseline_revision() -> str:
    """The parent of the last commit that changed how often http.py names
    BaseHTTPRequestHandler (the switch to h11): found by content, so a merge
    or a rebase does not move it."""
    out = subprocess.run(
        [
            "git",
            "log",
            "-1",
            "--format=%H",
            "-S",
            "BaseHTTPRequestHandler",
            "--",
            "exporter/outputs/http.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return f"{out}^"


class Server:
    def __init__(self, source: Path, series: int, tls: tuple[str, str] | None) -> None:
        cert, key = tls or ("", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(source), str(series), cert, key],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        port, self.size, self.zipped = map(int, self.proc.stdout.readline().split())
        self.port = port

    def cpu(self) -> float:
        """Seconds on a CPU, all threads (schedstat: nanoseconds, not 10 ms ticks;
        the server's threads are fixed, so none has exited with its time)."""
        total = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


def scrape(
    port: int, path: str, gzipped: bool, context: ssl.SSLContext | None
) -> tuple[float, int]:
    started = time.perf_counter()
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    try:
        conn.request("GET", path, headers={"Accept-Encoding": "gzip"} if gzipped else {})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, response.status
    finally:
        conn.close()
    return time.perf_counter() - started, len(body)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--series", type=int, default=53_000)
    parser.add_argument("--baseline", default=None, help="git revision of the 'before' http.py")
    parser.add_argument("--results", type=Path, default=None, help="append the report here")
    args = parser.parse_args()
    baseline = args.baseline or baseline_revision()
    short = subprocess.run(
        ["git", "rev-parse", "--short", baseline],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "http_before.py"
        before.write_text(
            subprocess.run(
                ["git", "show", f"{baseline}:exporter/outputs/http.py"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        after = ROOT / "exporter" / "outputs" / "http.py"
        pki = make_pki(Path(tmp))
        certs = (str(pki.server_cert), str(pki.server_key))
        client_tls = ssl.create_default_context(cafile=pki.ca)
        servers = {
            (name, tls): Server(source, args.series, certs if tls else None)
            for name, source in (("before", before), ("after", after))
            for tls in (False, True)
        }
        rows = []
        try:
            for case, path, gzipped, tls, more in CASES:
                rounds = args.rounds * more
                pair = [servers["before", tls], servers["after", tls]]
                context = client_tls if tls else None
                for server in pair:  # warm: imports, first TLS session, page cache
                    scrape(server.port, path, gzipped, context)
                times: list[list[float]] = [[], []]
                sizes = set()
                cpu = [-server.cpu() for server in pair]
                for i in range(rounds):
                    order = (0, 1) if i % 2 == 0 else (1, 0)
                    for which in order:
                        took, size = scrape(pair[which].port, path, gzipped, context)
                        times[which].append(took)
                        sizes.add(size)
                cpu = [cpu[k] + pair[k].cpu() for k in (0, 1)]
                assert len(sizes) == 1, f"the two servers sent different bodies: {sizes}"
                p50 = [statistics.median(t) * 1000 for t in times]
                per = [c / rounds * 1000 for c in cpu]
                rows.append((case, rounds, sizes.pop(), p50, per))
                print(f"{case}: p50 {p50} ms, cpu per request {per} ms", flush=True)
        finally:
            for server in servers.values():
                server.close()
    load = os.getloadavg()[0]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"### http_scrape ({when})",
        "",
        f"Machine: {machine.describe()}. Command: `.venv/bin/python benchmarks/http_scrape.py "
        f"--rounds {args.rounds}`. Before: exporter/outputs/http.py at {short}; after: this tree. "
        f"Load average at the end {load:.1f}. Latency is connect to last byte (p50, requests "
        "alternated between the two servers); CPU is the server process's time on a CPU "
        "(all threads, /proc/PID/task/*/schedstat) per request.",
        "",
        "| case | body bytes | rounds | p50 before / after (ms) | ratio "
        "| server CPU per request before / after (ms) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, rounds, size, p50, per in rows:
        cpu_ratio = f"{per[1] / per[0]:.2f}" if per[0] else "n/a"
        lines.append(
            f"| {case} | {size:,} | {rounds} | {p50[0]:.2f} / {p50[1]:.2f} | {p50[1] / p50[0]:.2f} "
            f"| {per[0]:.2f} / {per[1]:.2f} | {cpu_ratio} |"
        )
    report = "\n".join(lines) + "\n"
    print()
    print(report)
    if args.results is not None:
        with args.results.open("a") as f:
            f.write("\n" + report)


if __name__ == "__main__":
    main()
