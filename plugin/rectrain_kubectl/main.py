"""`kubectl rectrain` (an executable named kubectl-rectrain on PATH).

    kubectl rectrain list [-n NS | -A]
    kubectl rectrain watch NAME [-n NS] [--timeout S]   live progress from status.progress until the job ends
"""

from __future__ import annotations

import argparse
import sys
import time

from kubernetes import client, config
from tqdm import tqdm

GROUP, VERSION, PLURAL = "rectrain.io", "v1alpha1", "rectrainjobs"
FINISHED = ("Succeeded", "Failed")


def _api(kubeconfig: str | None) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(config.new_client_from_config(config_file=kubeconfig))


def _namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return args.namespace
    try:
        return config.list_kube_config_contexts(config_file=args.kubeconfig)[1]["context"].get("namespace", "default")
    except (config.ConfigException, KeyError, TypeError):
        return "default"


def _fmt(value, spec: str = "", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def summary_line(job: dict) -> str:
    status = job.get("status") or {}
    progress = status.get("progress") or {}
    metrics = status.get("metrics") or {}
    return (
        f"{job['metadata']['name']}: {status.get('phase') or 'Pending'}"
        f" step {_fmt(progress.get('step'))}/{_fmt(progress.get('totalSteps'))}"
        f" loss {_fmt(progress.get('loss'), '.4f')} auc {_fmt(metrics.get('auc'), '.4f')}"
        f" restarts {status.get('restarts') or 0} preemptions {status.get('preemptions') or 0}"
    )


def cmd_list(args: argparse.Namespace) -> int:
    api = _api(args.kubeconfig)
    if args.all_namespaces:
        jobs = api.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    else:
        jobs = api.list_namespaced_custom_object(GROUP, VERSION, _namespace(args), PLURAL)["items"]
    print(f"{'NAMESPACE':<16} {'NAME':<24} {'PHASE':<11} {'PROGRESS':>8} {'STEP':>8} {'LOSS':>8} {'AUC':>7} {'RESTARTS':>8} {'PREEMPT':>7}")
    for job in jobs:
        status = job.get("status") or {}
        progress = status.get("progress") or {}
        metrics = status.get("metrics") or {}
        print(
            f"{job['metadata']['namespace']:<16} {job['metadata']['name']:<24} {status.get('phase') or 'Pending':<11}"
            f" {_fmt(progress.get('percent'), '.1f'):>7}% {_fmt(progress.get('step')):>8} {_fmt(progress.get('loss'), '.4f'):>8}"
            f" {_fmt(metrics.get('auc'), '.4f'):>7} {status.get('restarts') or 0:>8} {status.get('preemptions') or 0:>7}"
        )
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Poll the job and draw its progress; returns 0 when it Succeeded, 1 when it Failed, 2 on timeout."""
    api = _api(args.kubeconfig)
    namespace = _namespace(args)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    # Not a terminal (CI, a log file): a line per progress update every few seconds instead of a bar.
    plain = args.no_bar or not sys.stdout.isatty()
    bar = tqdm(total=None, unit="step", dynamic_ncols=True, file=sys.stdout, disable=plain)
    last_phase, last_line, last_step = None, 0.0, None
    try:
        while True:
            job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name)
            status = job.get("status") or {}
            progress = status.get("progress") or {}
            phase = status.get("phase") or "Pending"
            if progress.get("totalSteps") and bar.total != progress["totalSteps"]:
                bar.total = progress["totalSteps"]
            if progress.get("step") is not None:
                bar.n = progress["step"]
            metrics = status.get("metrics") or {}
            bar.set_description(phase)
            bar.set_postfix_str(
                f"loss={_fmt(progress.get('loss'), '.4f')} auc={_fmt(metrics.get('auc'), '.4f')}"
                f" {_fmt(progress.get('samplesPerSecond'), ',.0f')} samples/s eta={_fmt(progress.get('etaSeconds'), '.0f')}s"
                f" restarts={status.get('restarts') or 0} preemptions={status.get('preemptions') or 0}"
            )
            bar.refresh()
            if plain and (phase != last_phase or (progress.get("step") != last_step and time.monotonic() - last_line > 5)):
                print(summary_line(job), flush=True)
                last_line, last_step = time.monotonic(), progress.get("step")
            last_phase = phase
            if phase in FINISHED:
                bar.close()
                print(summary_line(job))
                for condition in status.get("conditions") or []:
                    if condition.get("type") == phase and condition.get("message"):
                        print(f"  {condition.get('reason')}: {condition['message']}")
                return 0 if phase == "Succeeded" else 1
            if deadline and time.monotonic() > deadline:
                bar.close()
                print(f"timed out; {summary_line(job)}")
                return 2
            time.sleep(args.interval)
    except client.ApiException as exc:
        bar.close()
        print(f"kubectl-rectrain: {exc.status} {exc.reason}: {args.name} in {namespace}", file=sys.stderr)
        return 3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubectl rectrain", description="Work with RecTrainJobs.")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    p.add_argument("-n", "--namespace", default=None)
    commands = p.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="RecTrainJobs with phase and progress")
    listing.add_argument("-A", "--all-namespaces", action="store_true")
    watching = commands.add_parser("watch", help="live progress of one job until it ends")
    watching.add_argument("name")
    watching.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (0: never)")
    watching.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    watching.add_argument("--no-bar", action="store_true", help="print a line per phase change instead of a bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return {"list": cmd_list, "watch": cmd_watch}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
