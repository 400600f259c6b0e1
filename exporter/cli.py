"""orb8 command line: run | diagnose | check | version | top."""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # python -m exporter.cli: a clean SIGTERM even during imports
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

import argparse
import logging
import platform
from typing import Any

from exporter import __version__, registry
from exporter.config import ConfigError, Settings
from exporter.logs import setup_logging
from exporter.registry import add_arguments, load_settings

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orb8",
        description=(
            "Node agent exporting per-cgroup eBPF metrics (syscalls per container) to "
            "Prometheus. Every setting can also come from an ORB8_<NAME> environment "
            "variable or a YAML file (--config); flags win over environment over file."
        ),
    )
    parser.add_argument("--version", action="version", version=f"orb8 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    run = sub.add_parser("run", help="load probes and serve /metrics (foreground)")
    add_arguments(run)
    diagnose = sub.add_parser(
        "diagnose", help="check that this host can run orb8 and say how to fix what is missing"
    )
    add_arguments(diagnose)
    check = sub.add_parser(
        "check", help="compile, load and attach every configured probe, then detach (exit 0/1)"
    )
    add_arguments(check)
    sub.add_parser("version", help="print version and kernel")
    from exporter.top import add_arguments as add_top_arguments

    top = sub.add_parser(
        "top", help="live view of this node's pods from an orb8 /metrics (--once: a table)"
    )
    add_top_arguments(top)
    return parser


def cmd_run(settings: Settings) -> int:
    from exporter import memory
    from exporter.agent import Agent, StartupError
    from exporter.outputs.otlp import OtlpSettingError, resolve

    try:  # orb8's otlp_* settings merged with the OTEL_* environment
        otlp = resolve(settings.otlp_endpoint, settings.otlp_protocol, settings.otlp_interval)
    except OtlpSettingError as e:
        print(f"orb8: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    log = logging.getLogger("orb8")
    memory.tune_malloc()  # before any thread allocates (exporter/memory.py)
    agent = Agent(
        settings, otlp=otlp, banner=f"orb8 {__version__} starting on kernel {platform.release()}"
    )
    try:
        agent.bind()
        agent.run()
    except ConfigError as e:
        print(f"orb8: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as e:
        log.error("cannot start: %s", e)
        return 1
    except OSError as e:
        log.error("cannot start: %s (listen %s)", e, settings.listen)
        return 1
    return 0


def cmd_diagnose(settings: Settings) -> int:
    from exporter.diagnose import format_checks, run_checks

    maps = registry.kernel_maps(settings)
    results = run_checks(kernel_headers=settings.kernel_headers, maps=maps)
    print(format_checks(results))
    return 1 if any(r.status == "fail" for r in results) else 0


def cmd_check(settings: Settings) -> int:
    from exporter.agent import build_sources
    from exporter.identity import CgroupTree, Resolver, find_cgroup2_mount
    from exporter.kernel.headers import find_kernel_headers
    from exporter.sources import SourceAbsent

    try:
        headers = find_kernel_headers(settings.kernel_headers)
        resolver = Resolver(CgroupTree(settings.cgroup_root or find_cgroup2_mount()))
        sources = build_sources(settings, headers, resolver)
    except Exception as e:
        print(f"FAIL  setup: {e}")
        return 1
    failed = 0
    for source in sources:
        try:
            source.start()
            print(f"OK    {source.name}: {source.summary()}")
        except SourceAbsent as e:
            print(f"ABSENT {source.name}: {e}")
        except Exception as e:
            failed += 1
            print(f"FAIL  {source.name}: {e}")
        finally:
            source.close()
    return 1 if failed else 0


def _exit_cleanly(*_: Any) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    # Until the agent installs its own handler, SIGTERM (a pod deleted right
    # after it started) is a clean exit, not 143: nothing is attached yet.
    # Heavy imports (numpy, bcc) wait until after this line.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"orb8 {__version__} (kernel {platform.release()})")
        return 0
    if args.command == "top":  # a client of /metrics: none of the agent's settings
        from exporter.top import main as top_main

        return top_main(args)
    try:
        settings = load_settings(vars(args), check_paths=args.command != "diagnose")
    except ConfigError as e:
        print(f"orb8: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level, settings.log_format)
    commands = {"run": cmd_run, "diagnose": cmd_diagnose, "check": cmd_check}
    return commands[args.command](settings)


if __name__ == "__main__":
    sys.exit(main())
