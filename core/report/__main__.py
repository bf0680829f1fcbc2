"""``python -m layercut.report RUN_DIR``: (re)write RUN_DIR/report.html from a `layercut run` output folder."""

from __future__ import annotations

import argparse
import sys

from layercut.report.run_folder import write_run_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m layercut.report",
        description="Write RUN_DIR/report.html, a self-contained HTML report of a "
        "`layercut run` output folder (stages not run yet are marked so).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of `layercut run`")
    args = parser.parse_args(argv)
    try:
        path = write_run_report(args.run_dir)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
