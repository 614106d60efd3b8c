"""How fast the local cluster starts and stops (warm build cache). Not a test: prints a table.

    .venv/bin/python bench/localcluster_up.py [--runs 3] [--json out.json]

Target (issue: proving ground): warm `up` ready in <= 15 s; `down` leaves no process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from rectrain_local.cluster import LocalCluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-node", action="store_true", help="control plane only")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rectrain-bench-") as state:
        cluster = LocalCluster(Path(state))
        for run in range(args.runs):
            started = time.monotonic()
            cluster.up(fresh=True, node=not args.no_node)
            up_seconds = time.monotonic() - started
            reuse_started = time.monotonic()
            cluster.up()
            reuse_seconds = time.monotonic() - reuse_started
            records = cluster.load_state().processes
            started = time.monotonic()
            cluster.down(quiet=True)
            down_seconds = time.monotonic() - started
            left = sum(record.alive() for record in records)
            rows.append({"run": run + 1, "up": up_seconds, "reuse": reuse_seconds, "down": down_seconds, "left": left})
    print(f"{'run':>3} {'up s':>7} {'2nd up s':>9} {'down s':>7} {'left':>5}")
    for row in rows:
        print(f"{row['run']:>3} {row['up']:>7.2f} {row['reuse']:>9.2f} {row['down']:>7.2f} {row['left']:>5}")
    median_up = statistics.median(r["up"] for r in rows)
    print(f"median up {median_up:.2f} s = {median_up / 15:.2f} x the 15 s target; processes left: {sum(r['left'] for r in rows)}")
    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "medianUpSeconds": median_up}, indent=2))


if __name__ == "__main__":
    main()
