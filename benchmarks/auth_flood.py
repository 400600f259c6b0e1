"""Basic auth under a flood of wrong passwords: latencies and CPU, before/after.

The server is the real PrometheusServer with a web config (`basic_auth_users`,
bcrypt cost 10) and /healthz + /readyz, in its own process, serving ~2,000
series. An attacker on 127.0.0.1 sends `--rate` requests/s to /metrics with a
wrong password and never reads the answers (the issue's attacker), either the
same password every time or a fresh random one each time (`--passwords`).
Meanwhile a kubelet-like client GETs /healthz every 0.5 s and a Prometheus-like
client on 127.0.0.2 GETs /metrics with the right password every second.
Reported: p50/max of both, the scraper's status codes, and the server
process's CPU (utime + stime over the window, in cores).

Each variant runs twice in the same invocation: "before" is the exporter
package of `--before` (a git revision, extracted with git archive; default:
the last commit before the bounded-auth change), "after" is this checkout;
plus a quiet window (no attack) for each as the same-run baseline.

Usage: .venv/bin/python benchmarks/auth_flood.py [--seconds 20] [--rate 100]
       [--passwords same random] [--results benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import os
import random
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import bcrypt
import machine  # benchmarks/machine.py, beside this script
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEFORE = "0958436"  # last commit before bounded basic auth (issue 18, item 4)
PASSWORD = "right-password"

SERVER = """
import sys
from pathlib import Path
from exporter.listen import Listen
from exporter.model import counter
from exporter.outputs import health
from exporter.outputs.prometheus import PrometheusServer
from exporter.outputs.webconfig import load_web_config

def families():
    family = counter("orb8_syscalls_total", "syscalls", ("namespace", "pod", "syscall"))
    for pod in range(40):
        for syscall in range(50):
            family.add(("shop", f"web-{pod}", f"call{syscall}"), pod * syscall)
    return [family]

server = PrometheusServer(
    Listen("127.0.0.1", 0), families, lambda: "landing",
    routes={
        "/healthz": health.liveness,
        "/readyz": lambda: health.readiness(True, {"x": True}, None),
    },
    web_config=load_web_config(Path(sys.argv[1])),
)
server.start()
print(server.address[1], flush=True)
sys.stdin.read()
"""


def extract(rev: str, into: Path) -> Path:
    """The exporter package as of `rev`, in a directory to put on PYTHONPATH."""
    archive = into / "src.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", rev, "exporter"], cwd=ROOT, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def timed_get(port: int, path: str, source: str, auth: str | None) -> tuple[float, int]:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Authorization": auth} if auth else {})
        response = conn.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        conn.close()
    return time.monotonic() - started, status


def attacker(port: int, rate: float, passwords: str, stop: threading.Event) -> None:
    rng = random.Random(1)
    tick = time.monotonic()
    while not stop.is_set():
        password = "wrong" if passwords == "same" else f"guess-{rng.getrandbits(64):x}"
        request = (
            f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {basic('prom', password)}\r\n\r\n"
        )
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        ):
            sock.sendall(request.encode())  # and never read the answer
        tick += 1 / rate
        stop.wait(max(0.0, tick - time.monotonic()))


def window(port: int, pid: int, seconds: float, attack: tuple[float, str] | None) -> dict:
    stop = threading.Event()
    health: list[float] = []
    scrapes: list[tuple[float, int]] = []

    def probe(path: str, period: float, source: str, auth: str | None, out: list) -> None:
        while not stop.is_set():
            took, status = timed_get(port, path, source, auth)
            out.append(took if path == "/healthz" else (took, status))
            stop.wait(max(0.0, period - took))

    threads = [
        threading.Thread(target=probe, args=("/healthz", 0.5, "127.0.0.1", None, health)),
        threading.Thread(
            target=probe,
            args=("/metrics", 1.0, "127.0.0.2", basic("prom", PASSWORD), scrapes),
        ),
    ]
    if attack is not None:
        threads.append(threading.Thread(target=attacker, args=(port, *attack, stop)))
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    cpu1, wall1 = cpu_seconds(pid), time.monotonic()
    stop.set()
    for thread in threads:
        thread.join(90)
    scrape_times = [t for t, status in scrapes if status == 200]  # failures are counted apart
    return {
        "cores": (cpu1 - cpu0) / (wall1 - wall0),
        "health_p50": statistics.median(health) if health else float("nan"),
        "health_max": max(health, default=float("nan")),
        "health_n": len(health),
        "scrape_p50": statistics.median(scrape_times) if scrapes else float("nan"),
        "scrape_max": max(scrape_times, default=float("nan")),
        "scrape_codes": sorted({s for _, s in scrapes}),
        "scrape_ok": sum(1 for _, s in scrapes if s == 200),
        "scrape_n": len(scrapes),
    }


def run_variant(tree: Path, web: Path, seconds: float, attack: tuple[float, str] | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(web)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=tempfile.gettempdir(),  # import `exporter` from `tree`, not from the cwd
        env=env,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        timed_get(port, "/metrics", "127.0.0.2", basic("prom", PASSWORD))  # warm
        return window(port, proc.pid, seconds, attack)
    finally:
        proc.kill()
        proc.wait()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--passwords", nargs="+", default=["same", "random"])
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--results", type=Path, help="append the report to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        web = work / "web.yml"
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
        web.write_text(yaml.safe_dump({"basic_auth_users": {"prom": hashed}}))
        trees = {f"before ({args.before})": extract(args.before, work), "after": ROOT}
        rows = []
        for label, tree in trees.items():
            quiet = run_variant(tree, web, args.seconds / 2, None)
            rows.append((label, "none", quiet))
            print(label, "none", quiet, flush=True)
            for passwords in args.passwords:
                result = run_variant(tree, web, args.seconds, (args.rate, passwords))
                rows.append((label, f"{args.rate:.0f}/s, {passwords} wrong password", result))
                print(label, passwords, result, flush=True)

    lines = [
        f"### auth_flood ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"Machine: {machine.describe()}. Command: `.venv/bin/python benchmarks/auth_flood.py "
        f"--seconds {args.seconds:g} --rate {args.rate:g}`. Load average at the end "
        f"{os.getloadavg()[0]:.1f} (other work on the VM competes for the CPUs). bcrypt cost 10; "
        "goals under the attack: /healthz p50 <= 50 ms, authenticated /metrics p50 <= 1 s, "
        "CPU <= 1 core. /metrics latencies are of the scrapes answered 200; code 0 = no answer.",
        "",
        "| code | attack | server CPU (cores) | /healthz p50 / max | /metrics (right password) "
        "p50 / max | scrapes answered 200 |",
        "|---|---|---|---|---|---|",
    ]
    for label, attack, r in rows:
        lines.append(
            f"| {label} | {attack} | {r['cores']:.2f} | {ms(r['health_p50'])} / "
            f"{ms(r['health_max'])} | {ms(r['scrape_p50'])} / {ms(r['scrape_max'])} | "
            f"{r['scrape_ok']} of {r['scrape_n']} (codes {r['scrape_codes']}) |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.results is not None:
        with args.results.open("a") as f:
            f.write("\n" + report)


if __name__ == "__main__":
    main()
