"""python -m dashboards [--check]: write (or compare) the dashboard JSON files."""

from __future__ import annotations

import argparse
import sys

from dashboards import DASHBOARDS, DIRECTORY
from dashboards.builder import render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="fail if a committed file is not what the code makes"
    )
    args = parser.parse_args(argv)
    stale = []
    for spec in DASHBOARDS:
        path = DIRECTORY / spec.file
        content = render(spec)
        if args.check:
            if not path.is_file() or path.read_text() != content:
                stale.append(spec.file)
        else:
            path.write_text(content)
            print(f"wrote {path}")
    if stale:
        print(
            f"stale: {', '.join(stale)}; run `make dashboards` and commit the result",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
