"""`orb8 top`: a live terminal view of one node's pods, read from orb8's own
/metrics (the same endpoint Prometheus scrapes; no query API of its own).

A client only: it imports nothing from the agent, its sources or outputs
(tests/unit/test_layering.py). Rates come from consecutive scrapes
(model.py), a focused line parser reads only the families shown (parse.py),
scrapes run in a background thread (fetch.py), and the live view uses
textual (app.py, the optional `orb8[top]` extra); `--once` and `--json`
need nothing beyond the standard library. docs/top.md shows a screen.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from exporter.top.fetch import DEFAULT_URL, Endpoint, FetchError, Source, node_of
from exporter.top.model import COLUMN_BY_ATTR, COLUMN_BY_KEY, select
from exporter.top.render import as_json, header_lines, table

SORTS = sorted(COLUMN_BY_ATTR)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url",
        nargs="?",
        default=DEFAULT_URL,
        help=f"orb8's /metrics (default {DEFAULT_URL}); host:port is enough",
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between scrapes (2)")
    parser.add_argument(
        "--window",
        type=float,
        default=60.0,
        help="seconds over which dangerous and novel calls count (60)",
    )
    parser.add_argument("--once", action="store_true", help="print one plain table and exit")
    parser.add_argument("--json", action="store_true", help="print one JSON document and exit")
    parser.add_argument(
        "--sort",
        default="syscalls",
        help=f"column to sort by: {', '.join(SORTS)} (or its key letter)",
    )
    parser.add_argument("--ascending", action="store_true", help="smallest first")
    parser.add_argument("--filter", default="", help="words in namespace/pod/container, or ns=NAME")
    parser.add_argument("--containers", action="store_true", help="one row per container")
    parser.add_argument("--limit", type=int, default=None, help="--once: at most this many rows")
    tls = parser.add_argument_group("TLS and authentication (an orb8 with --web-config-file)")
    tls.add_argument("--ca-file", type=Path, help="CA bundle that signed orb8's certificate")
    tls.add_argument("--cert", type=Path, help="client certificate (mutual TLS)")
    tls.add_argument("--key", type=Path, help="client certificate's key")
    tls.add_argument("--insecure", action="store_true", help="do not verify orb8's certificate")
    tls.add_argument("--username", help="basic auth user")
    tls.add_argument(
        "--password-file",
        type=Path,
        help="file holding the basic auth password (or set ORB8_TOP_PASSWORD)",
    )
    tls.add_argument("--timeout", type=float, default=10.0, help="seconds per scrape (10)")


def _endpoint(args: argparse.Namespace) -> Endpoint:
    password = os.environ.get("ORB8_TOP_PASSWORD")
    if args.password_file is not None:
        password = args.password_file.read_text().rstrip("\r\n")
    return Endpoint(
        args.url,
        ca_file=args.ca_file,
        cert_file=args.cert,
        key_file=args.key,
        insecure=args.insecure,
        username=args.username,
        password=password,
        timeout=args.timeout,
    )


def main(args: argparse.Namespace) -> int:
    sort = COLUMN_BY_KEY[args.sort].attr if args.sort in COLUMN_BY_KEY else args.sort
    if sort not in COLUMN_BY_ATTR:
        known = ", ".join(SORTS)
        print(f"orb8 top: unknown --sort {args.sort!r} (one of {known})", file=sys.stderr)
        return 2
    if args.interval <= 0 or args.window <= 0:
        print("orb8 top: --interval and --window must be positive", file=sys.stderr)
        return 2
    try:
        endpoint = _endpoint(args)
    except (OSError, ValueError) as e:
        print(f"orb8 top: {e}", file=sys.stderr)
        return 2
    node = node_of(endpoint.url)
    source = Source(endpoint, window=args.window)
    descending = sort != "name" and not args.ascending
    if args.once or args.json:
        try:
            source.scrape()  # rates need two scrapes
            time.sleep(args.interval)
            frame = source.scrape()
        except FetchError as e:
            print(f"orb8 top: {e}", file=sys.stderr)
            return 1
        rows = select(frame, sort, descending, args.filter, args.containers)
        if args.json:
            print(as_json(rows[: args.limit] if args.limit else rows, frame.header, node, frame))
        else:
            print("\n".join(header_lines(frame.header, node, frame, args.window)))
            print()
            print(table(rows, limit=args.limit))
        return 0
    try:
        from exporter.top.app import run
    except ImportError as e:
        print(
            f"orb8 top: the live view needs the 'top' extra (pip install 'orb8[top]'): {e}; "
            "--once and --json work without it",
            file=sys.stderr,
        )
        return 2
    run(
        source,
        node,
        args.interval,
        args.window,
        sort=sort,
        descending=descending,
        query=args.filter,
        containers=args.containers,
    )
    return 0
