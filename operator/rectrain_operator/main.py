"""`rectrain-operator`: the RecTrainJob operator process (kopf; standalone, or with kopf peering
so that further replicas stand by: see standby.py)."""

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
from rectrain_operator.standby import KOPF_DEFAULT_LIFETIME, Standby, own_identity

log = logging.getLogger("rectrain.main")

# Characters that make a --namespace value a kopf pattern (globs, negations, lists) rather than a name.
NAMESPACE_PATTERN_CHARS = "*?!,"


def exact_namespaces(namespaces: list[str]) -> bool:
    """Some namespaces, each a plain name: kopf can watch them without listing namespaces, and a
    KopfPeering can live in each."""
    return bool(namespaces) and not any(c in ns for ns in namespaces for c in NAMESPACE_PATTERN_CHARS)


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
    p.add_argument("--peering", metavar="NAME", default=None,
                   help="kopf peering object name (a ClusterKopfPeering when watching all namespaces, else a "
                        "KopfPeering in each watched namespace); only the live replica with the highest priority "
                        "acts, the others stand by. Default: none (standalone)")
    p.add_argument("--priority", type=int, default=0, help="kopf peering priority (with --peering)")
    p.add_argument("--peering-lifetime", type=int, default=KOPF_DEFAULT_LIFETIME, metavar="SECONDS",
                   help="seconds a replica counts as alive after its last keep-alive; a standby takes over this "
                        "long after the active replica died (with --peering; kopf's default)")
    args = p.parse_args(argv)
    args.exact_namespaces = exact_namespaces(args.namespace)
    if args.peering is not None:
        if not args.peering:
            p.error("--peering needs a name")
        if args.namespace and not args.exact_namespaces:
            p.error("--peering needs exact --namespace names (no patterns): a KopfPeering lives in each")
        if args.peering_lifetime < 1:
            p.error("--peering-lifetime must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kopf.configure(verbose=False, log_format=getattr(kopf.LogFormat, args.log_format.upper()))
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
    metrics = Metrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_address)
    api_client = load_client()
    cluster = Cluster(api_client)
    settings = kopf.OperatorSettings()
    identity = own_identity()
    standby = None
    if args.peering:
        settings.peering.lifetime = args.peering_lifetime
        # The gate opens only when the peering allows this replica to act (standby.py says why kopf's own
        # pause does not stop our worker and resync threads); becoming active relists every job at once.
        standby = Standby(api_client, args.peering, args.priority, identity, args.namespace,
                          on_active=lambda: reconciler.resync(), metrics_registry=metrics.registry)
    reconciler = Reconciler(cluster, metrics, namespaces=args.namespace, workers=args.workers,
                            gate=standby.active if standby else None)
    registry = kopf.OperatorRegistry()
    register(registry, reconciler, args.resync_seconds, standby, exact_namespaces=args.exact_namespaces)
    log.info("starting rectrain-operator (metrics port %s, %s)", args.metrics_port or "off",
             f"peering {args.peering!r} priority {args.priority}" if args.peering else "standalone")
    try:
        asyncio.run(kopf.operator(
            registry=registry,
            settings=settings,
            identity=identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
            standalone=not args.peering,
            peering_name=args.peering or None,
            priority=args.priority,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness_endpoint or None,
        ))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
