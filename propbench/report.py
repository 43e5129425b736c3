"""``python -m propbench.report SWEEP_DIR``: aggregate a finished, failed or interrupted
sweep (see :mod:`propbench.sweep`), print its table, and exit 1 if any job failed, never
finished or is corrupt, or the experiment's claim did not hold (2 if the folder is not a
sweep or its jobs.json is corrupt)."""

from __future__ import annotations

import argparse
import sys

from propbench.errors import PropbenchError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m propbench.report", description=__doc__)
    parser.add_argument("sweep_dir", help="a sweep folder (results/multirun/<time>)")
    parser.add_argument("--no-figures", action="store_true", help="tables only")
    args = parser.parse_args(argv)

    from propbench.sweep import SWEEP_MD, aggregate

    try:
        report = aggregate(args.sweep_dir, figures=not args.no_figures)
    except PropbenchError as err:
        print(f"propbench.report: error: {err}", file=sys.stderr)
        return 2
    print((report.folder / SWEEP_MD).read_text())
    for job in report.failed:
        row = report.table.set_index("job").loc[job]
        print(f"failed: job {job} ({row['overrides']}): {row['error']}", file=sys.stderr)
    for job in report.corrupt:
        row = report.table.set_index("job").loc[job]
        print(f"corrupt: job {job} ({row['overrides']}): {row['error']}", file=sys.stderr)
    for job in report.unfinished:
        row = report.table.set_index("job").loc[job]
        print(f"{row['status']}: job {job} ({row['overrides']})", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
