"""`rectrain-operator`: the RecTrainJob operator process (kopf, standalone, one replica)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import kopf

from rectrain_operator.cluster import Cluster, load_client
from rectrain_operator.handlers import register
from rectrain_operator.metrics import Metrics
from rectrain_operator.reconciler import Reconciler

log = logging.getLogger("rectrain.main")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rectrain-operator", description="Run the RecTrainJob operator.")
    p.add_argument("--namespace", "-n", action="append", default=[],
                   help="watch this namespace (repeatable); default: all namespaces")
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0 disables)")
    p.add_argument("--metrics-address", default="0.0.0.0", help="address for /metrics")
    p.add_argument("--liveness-endpoint", default="http://0.0.0.0:8081/healthz",
                   help="kopf liveness URL to serve ('' disables)")
    p.add_argument("--resync-seconds", type=float, default=30.0, help="period of the full relist of jobs")
    p.add_argument("--workers", type=int, default=4, help="reconcile worker threads")
    p.add_argument("--log-format", choices=["json", "plain", "full"], default="json")
    p.add_argument("--verbose", action="store_true", help="also log kopf's own messages")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kopf.configure(verbose=False, log_format=getattr(kopf.LogFormat, args.log_format.upper()))
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
    metrics = Metrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_address)
    cluster = Cluster(load_client())
    reconciler = Reconciler(cluster, metrics, namespaces=args.namespace, workers=args.workers)
    registry = kopf.OperatorRegistry()
    register(registry, reconciler, args.resync_seconds)
    if args.namespace and not any(c in ns for ns in args.namespace for c in "*?!,"):
        @kopf.on.startup(registry=registry)
        def exact_namespaces(settings: kopf.OperatorSettings, **_) -> None:
            # Exact namespace names need no namespace listing, which least-privilege RBAC (the chart's
            # per-namespace Roles) does not grant: without this kopf retries a forbidden list for about a
            # minute, logging errors, before it starts watching the namespaces at all.
            settings.scanning.disabled = True
    log.info("starting rectrain-operator (metrics port %s)", args.metrics_port or "off")
    try:
        asyncio.run(kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness_endpoint or None,
        ))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
