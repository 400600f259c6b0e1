"""python -m dashboards [--check]: write (or compare) the dashboard JSON files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dashboards import DASHBOARDS, DEPLOY_DIRECTORY, DIRECTORY
from dashboards.builder import render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="fail if a committed file is not what the code makes"
    )
    parser.add_argument(
        "--directory", type=Path, default=DIRECTORY, help="where the JSON files are (default: here)"
    )
    parser.add_argument(
        "--deploy-directory",
        type=Path,
        default=DEPLOY_DIRECTORY,
        help="the kustomize component's copies (default: deploy/components/grafana-dashboards)",
    )
    args = parser.parse_args(argv)
    stale = []
    for spec, path in (
        (spec, directory / spec.file)
        for directory in (args.directory, args.deploy_directory)
        for spec in DASHBOARDS
    ):
        content = render(spec)
        if args.check:
            if not path.is_file():
                stale.append(f"{path} (missing)")
            elif path.read_text() != content:
                stale.append(f"{path} (differs)")
        else:
            path.write_text(content)
            print(f"wrote {path}")
    if stale:
        print(
            f"not what the code generates: {', '.join(stale)}; "
            "run `make dashboards` and commit the result",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
