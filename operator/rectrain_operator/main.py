"""`rectrain-operator`: the RecTrainJob operator process (kopf). It joins kopf peering by default (the
peering object `rectrain-operator`, created when missing and allowed), so that any further operator --
a second replica, the Helm chart's beside `make demo`'s -- stands by while a higher-priority one acts:
see standby.py. `--standalone` opts out."""

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
from rectrain_operator.standby import KOPF_DEFAULT_LIFETIME, Standby, ensure_peering, own_identity
from rectrain_operator.webhook import register_webhook, webhook_server

log = logging.getLogger("rectrain.main")

# Characters that make a --namespace value a kopf pattern (globs, negations, lists) rather than a name.
NAMESPACE_PATTERN_CHARS = "*?!,"
# The peering every operator joins unless told otherwise; the Helm chart's default name too, so that
# an operator started by hand (or by `make demo`) and the chart's find each other.
DEFAULT_PEERING = "rectrain-operator"


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
    p.add_argument("--peering", metavar="NAME", default=DEFAULT_PEERING,
                   help="kopf peering object name (a ClusterKopfPeering when watching all namespaces, else a "
                        "KopfPeering in each watched namespace; created when missing, if allowed); only the live "
                        f"operator with the highest priority acts, the others stand by. Default: {DEFAULT_PEERING}")
    p.add_argument("--standalone", action="store_true",
                   help="act without peering, whatever other operators run (two such operators both act on every job)")
    p.add_argument("--priority", type=int, default=0,
                   help="kopf peering priority; the Helm chart's operator has 100, so a hand-started one stands by beside it")
    p.add_argument("--peering-lifetime", type=int, default=KOPF_DEFAULT_LIFETIME, metavar="SECONDS",
                   help="seconds a replica counts as alive after its last keep-alive; a standby takes over this "
                        "long after the active replica died (with --peering; kopf's default)")
    p.add_argument("--webhook-port", type=int, default=0,
                   help="serve the validating admission webhook (webhook.py) over HTTPS on this port; "
                        "needs --webhook-cert and --webhook-key. Default: 0 (off)")
    p.add_argument("--webhook-address", default="0.0.0.0", help="address for the webhook (with --webhook-port)")
    p.add_argument("--webhook-cert", metavar="FILE", help="the webhook's serving certificate (PEM)")
    p.add_argument("--webhook-key", metavar="FILE", help="the webhook's private key (PEM)")
    args = p.parse_args(argv)
    args.exact_namespaces = exact_namespaces(args.namespace)
    if args.standalone:
        args.peering = None
    if args.peering is not None:
        if not args.peering:
            p.error("--peering needs a name")
        if args.namespace and not args.exact_namespaces:
            p.error("peering needs exact --namespace names (no patterns): a KopfPeering lives in each; "
                    "or run --standalone")
        if args.peering_lifetime < 1:
            p.error("--peering-lifetime must be at least 1")
    if args.webhook_port and not (args.webhook_cert and args.webhook_key):
        p.error("--webhook-port needs --webhook-cert and --webhook-key (the API server calls webhooks over HTTPS only)")
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
        ensure_peering(api_client, args.peering, args.namespace)
        settings.peering.lifetime = args.peering_lifetime
        # The gate opens only when the peering allows this replica to act (standby.py says why kopf's own
        # pause does not stop our worker and resync threads); becoming active relists every job at once.
        standby = Standby(api_client, args.peering, args.priority, identity, args.namespace,
                          on_active=lambda: reconciler.resync(), metrics_registry=metrics.registry)
    reconciler = Reconciler(cluster, metrics, namespaces=args.namespace, workers=args.workers,
                            gate=standby.active if standby else None)
    registry = kopf.OperatorRegistry()
    register(registry, reconciler, args.resync_seconds, standby, exact_namespaces=args.exact_namespaces)
    if args.webhook_port:
        # Served by every replica, standbys too: admission is stateless and kopf does not pause it.
        register_webhook(registry)
        if not args.verbose:
            logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # a line per API request otherwise
        settings.admission.server = webhook_server(args.webhook_port, args.webhook_address, args.webhook_cert,
                                                   args.webhook_key)
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
