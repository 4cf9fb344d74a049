"""Fit scaling laws and write the frontier report of a finished (or running) sweep.

    python sweeps/frontier.py results/demo

Writes results/demo/frontier/: fits.json, allocation.csv, PNG plots and report.html.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from brainray.summary import final_summary, run_frontier  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", help="the sweep folder, e.g. results/demo")
    args = ap.parse_args(argv)
    try:
        run_frontier(Path(args.sweep).resolve())
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(final_summary(Path(args.sweep).resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
