"""`kubectl rectrain` (an executable named kubectl-rectrain on PATH).

    kubectl rectrain submit FILE [-n NS] [--watch]      create (or update) the RecTrainJob(s) in FILE ('-': stdin)
                                                        once every one is valid (else: each error, by field)
    kubectl rectrain list [-n NS | -A]
    kubectl rectrain watch NAME [-n NS] [--timeout S]   live progress from status.progress until the job ends
    kubectl rectrain describe NAME [-n NS]              phase, conditions, restarts vs preemptions, progress, events
    kubectl rectrain logs NAME [-n NS] [--rank N]       a rank's output (the API's pod log; on the local
                                                        cluster, the node agent's copy when the API has none)
    kubectl rectrain suspend NAME [-n NS]               stop its rank pods (they checkpoint); phase Suspended
    kubectl rectrain resume NAME [-n NS]                start it again (a new attempt, from the checkpoint)
    kubectl rectrain delete NAME [-n NS] [--wait]       delete it; its pods, Service and RBAC go with it
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml
from kubernetes import client, config
from tqdm import tqdm

from rectrain_api.validation import check_manifest

from rectrain_kubectl.logs import missing_log_reason

GROUP, VERSION, PLURAL, KIND = "rectrain.io", "v1alpha1", "rectrainjobs", "RecTrainJob"
FINISHED = ("Succeeded", "Failed")
LABEL_JOB_NAME, LABEL_RANK, LABEL_ATTEMPT = "rectrain.io/job-name", "rectrain.io/rank", "rectrain.io/attempt"


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
                if not plain:  # plain mode printed this line on the phase change just now
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


def _fail(message: str, code: int = 1) -> int:
    print(f"kubectl-rectrain: {message}", file=sys.stderr)
    return code


def _api_error(exc: client.ApiException) -> str:
    try:
        import json

        return json.loads(exc.body).get("message") or f"{exc.status} {exc.reason}"
    except (TypeError, ValueError):
        return f"{exc.status} {exc.reason}"


# ------------------------------------------------------------------------------ submit


def submit_errors(doc) -> list[str]:
    """Why `submit` refuses one document of the file: not a RecTrainJob, or one that breaks the
    schema (unknown fields included) or a rule the operator would fail it for. The same models and
    rules as the operator and the trainer (rectrain_api.validation); empty means it may be sent."""
    if not isinstance(doc, dict) or doc.get("kind") != KIND or doc.get("apiVersion") != f"{GROUP}/{VERSION}":
        what = f"{doc.get('apiVersion')}/{doc.get('kind')}" if isinstance(doc, dict) else type(doc).__name__
        return [f"not a {GROUP}/{VERSION} {KIND}: {what} (use kubectl apply for other objects)"]
    return check_manifest(doc)


def cmd_submit(args: argparse.Namespace) -> int:
    """Create each RecTrainJob in FILE; an existing job of the same name is updated (its spec replaced).
    Nothing is sent unless every document in the file is valid."""
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        docs = [d for d in yaml.safe_load_all(text) if d]
    except (OSError, yaml.YAMLError) as exc:
        return _fail(f"{args.file}: {exc}")
    if not docs:
        return _fail(f"{args.file}: no objects")
    errors = [f"{args.file}: {message}" for doc in docs for message in submit_errors(doc)]
    for message in errors:
        _fail(message)
    if errors:
        return 1
    api = _api(args.kubeconfig)
    default_ns = _namespace(args)
    submitted = []
    for doc in docs:
        meta = doc["metadata"]
        ns = args.namespace or meta.get("namespace") or default_ns
        if args.namespace and meta.get("namespace") and meta["namespace"] != args.namespace:
            return _fail(f"{meta['name']}: the file says namespace {meta['namespace']}, -n says {args.namespace}")
        meta["namespace"] = ns
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc)
            verb = "created"
        except client.ApiException as exc:
            if exc.status != 409:
                return _fail(f"{ns}/{meta['name']}: {_api_error(exc)}")
            try:
                current = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, meta["name"])
                meta["resourceVersion"] = current["metadata"]["resourceVersion"]
                api.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, meta["name"], doc)
                verb = "configured"
            except client.ApiException as exc2:
                return _fail(f"{ns}/{meta['name']}: {_api_error(exc2)}")
        print(f"rectrainjob.{GROUP}/{meta['name']} {verb} (namespace {ns})")
        submitted.append((ns, meta["name"]))
    if args.watch:
        if len(submitted) != 1:
            return _fail("--watch needs exactly one job in the file")
        args.namespace, args.name = submitted[0]
        return cmd_watch(args)
    return 0


# ------------------------------------------------------------------------------ describe


def _age(timestamp) -> str:
    if timestamp is None:
        return "-"
    from datetime import datetime, timezone

    if isinstance(timestamp, str):
        timestamp = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int((datetime.now(timezone.utc) - timestamp).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def describe_text(job: dict, pods: list, events: list) -> str:
    meta, spec = job["metadata"], job.get("spec") or {}
    status = job.get("status") or {}
    progress, metrics = status.get("progress") or {}, status.get("metrics") or {}
    run_policy = spec.get("runPolicy") or {}
    lines = [
        f"Name:         {meta['name']}",
        f"Namespace:    {meta['namespace']}",
        f"Image:        {spec.get('image', '-')}",
        f"Replicas:     {spec.get('replicas', 1)} x {spec.get('gpusPerReplica') or 0} GPU",
        f"Phase:        {status.get('phase') or 'Pending'}",
        f"Ready:        {status.get('ready') or '-'}",
        f"Attempt:      {status.get('attempt', 0)}",
        f"Restarts:     {status.get('restarts') or 0} (failures {status.get('failures') or 0}"
        f" of backoffLimit {run_policy.get('backoffLimit', '-')}, preemptions {status.get('preemptions') or 0}"
        f" of maxPreemptions {run_policy.get('maxPreemptions') if run_policy.get('maxPreemptions') is not None else 'unlimited'})",
    ]
    last = status.get("lastFailure")
    if last:
        lines.append(f"Last failure: {last.get('cause')} of rank {last.get('rank')}: {last.get('reason')}"
                     f" (exit {last.get('exitCode', '-')}) {last.get('message') or ''}".rstrip())
    if progress:
        pct = progress.get("percent")
        lines.append(f"Progress:     epoch {progress.get('epoch', 0)}, step {_fmt(progress.get('step'))}/{_fmt(progress.get('totalSteps'))}"
                     f" ({_fmt(pct, '.1f')}%), loss {_fmt(progress.get('loss'), '.4f')},"
                     f" {_fmt(progress.get('samplesPerSecond'), ',.0f')} samples/s, eta {_fmt(progress.get('etaSeconds'), '.0f')}s")
    else:
        lines.append("Progress:     -")
    if metrics:
        lines.append(f"Metrics:      auc {_fmt(metrics.get('auc'), '.4f')}, logloss {_fmt(metrics.get('logloss'), '.4f')}"
                     f" at step {_fmt(metrics.get('evalStep'))}")
    for key, label in (("startTime", "Started"), ("firstRunningTime", "Running since"), ("completionTime", "Completed")):
        if status.get(key):
            lines.append(f"{label + ':':<14}{status[key]}")
    lines.append("Conditions:")
    lines.append(f"  {'TYPE':<11} {'STATUS':<7} {'REASON':<26} MESSAGE")
    for c in status.get("conditions") or []:
        lines.append(f"  {c.get('type', ''):<11} {c.get('status', ''):<7} {c.get('reason') or '':<26} {c.get('message') or ''}")
    lines.append("Pods:")
    if not pods:
        lines.append("  <none>")
    for p in pods:
        labels = p.metadata.labels or {}
        lines.append(f"  {p.metadata.name:<32} rank {labels.get(LABEL_RANK, '?'):<4} attempt {labels.get(LABEL_ATTEMPT, '?'):<3}"
                     f" {p.status.phase or '-':<10} {p.status.pod_ip or ''}")
    lines.append("Events:")
    if not events:
        lines.append("  <none>")
    for e in events:
        when = e.last_timestamp or e.event_time or e.metadata.creation_timestamp
        lines.append(f"  {e.type or '':<8} {e.reason or '':<22} {_age(when):>5} ago  {e.message or ''}")
    return "\n".join(lines)


def _read_job(args: argparse.Namespace) -> tuple[client.CoreV1Api, str, dict | None]:
    """The core API, the namespace and the named job; None (after saying why) when it cannot be read."""
    api_client = config.new_client_from_config(config_file=args.kubeconfig)
    namespace = _namespace(args)
    try:
        job = client.CustomObjectsApi(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name)
    except client.ApiException as exc:
        _fail(f"{namespace}/{args.name}: {_api_error(exc)}", 3)
        job = None
    return client.CoreV1Api(api_client), namespace, job


def cmd_describe(args: argparse.Namespace) -> int:
    core, namespace, job = _read_job(args)
    if job is None:
        return 3
    pods = core.list_namespaced_pod(namespace, label_selector=f"{LABEL_JOB_NAME}={args.name},{LABEL_RANK}").items
    pods.sort(key=lambda p: (int((p.metadata.labels or {}).get(LABEL_ATTEMPT, 0)), int((p.metadata.labels or {}).get(LABEL_RANK, 0))))
    # By uid too: a job deleted and created again under the same name keeps its old Events for an
    # hour, and they are not this job's.
    events = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={args.name},involvedObject.kind={KIND},"
                                  f"involvedObject.uid={job['metadata']['uid']}").items
    events.sort(key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp)
    print(describe_text(job, pods, events[-args.events:] if args.events else events))
    return 0


# ------------------------------------------------------------------------------ logs


def cmd_logs(args: argparse.Namespace) -> int:
    core, namespace, job = _read_job(args)
    if job is None:
        return 3
    replicas = (job.get("spec") or {}).get("replicas", 1)
    if not 0 <= args.rank < replicas:
        return _fail(f"{args.name} has ranks 0..{replicas - 1}, not {args.rank}", 2)
    selector = f"{LABEL_JOB_NAME}={args.name},{LABEL_RANK}={args.rank}"
    if args.attempt is not None:
        selector += f",{LABEL_ATTEMPT}={args.attempt}"
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    if not pods:
        return _fail(f"{args.name}: no pod for {missing_log_reason(job, args.rank, args.attempt)}")
    newest = max(pods, key=lambda p: int((p.metadata.labels or {}).get(LABEL_ATTEMPT, 0)))
    pod = newest.metadata.name
    if not newest.spec.node_name:  # the API server answers an empty log for a pod no node runs
        return _fail(f"the cluster cannot serve the log of pod {namespace}/{pod}: it is not scheduled to a node yet")
    kwargs = {"tail_lines": args.tail} if args.tail else {}
    try:
        text = core.read_namespaced_pod_log(pod, namespace, **kwargs)
    except client.ApiException as exc:
        return _fail(f"the cluster cannot serve the log of pod {namespace}/{pod}: {_api_error(exc)}")
    text = text or ""
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return 0


# ------------------------------------------------------------------------------ delete, suspend, resume


def _missing(namespace: str, name: str) -> int:
    return _fail(f"{namespace}/{name}: no RecTrainJob of that name (`kubectl rectrain list -n {namespace}` shows them)", 3)


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete the job; Kubernetes then deletes its pods, Service and RBAC (the job owns them)."""
    api, namespace = _api(args.kubeconfig), _namespace(args)
    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name)
    except client.ApiException as exc:
        return _missing(namespace, args.name) if exc.status == 404 else _fail(f"{namespace}/{args.name}: {_api_error(exc)}")
    if args.wait:
        deadline = time.monotonic() + args.timeout
        while True:
            try:
                api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name)
            except client.ApiException as exc:
                if exc.status == 404:
                    break
                raise
            if time.monotonic() > deadline:
                return _fail(f"{namespace}/{args.name}: still there after {args.timeout:.0f}s (a finalizer of a stopped operator?)", 2)
            time.sleep(0.5)
    print(f"rectrainjob.{GROUP}/{args.name} deleted (namespace {namespace}); its pods, Service and RBAC go with it")
    return 0


def _set_suspend(args: argparse.Namespace, suspend: bool) -> int:
    """Patch spec.runPolicy.suspend, after checking that it changes something the operator acts on."""
    api, namespace = _api(args.kubeconfig), _namespace(args)
    try:
        job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name)
    except client.ApiException as exc:
        return _missing(namespace, args.name) if exc.status == 404 else _fail(f"{namespace}/{args.name}: {_api_error(exc)}")
    verb = "suspend" if suspend else "resume"
    phase = (job.get("status") or {}).get("phase")
    if phase in FINISHED:
        return _fail(f"{namespace}/{args.name}: cannot {verb} it: it has {phase} (a finished job keeps its outcome; "
                     f"delete it and submit it again to run it anew)")
    if bool(((job.get("spec") or {}).get("runPolicy") or {}).get("suspend")) == suspend:
        print(f"rectrainjob.{GROUP}/{args.name} is already {'suspended' if suspend else 'not suspended'} (namespace {namespace})")
        return 0
    try:
        api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name, {"spec": {"runPolicy": {"suspend": suspend}}},
                                           _content_type="application/merge-patch+json")
    except client.ApiException as exc:
        return _missing(namespace, args.name) if exc.status == 404 else _fail(f"{namespace}/{args.name}: {_api_error(exc)}")
    if suspend:
        detail = "the operator stops its rank pods (SIGTERM: the trainer checkpoints first); phase Suspended, not a failure"
    else:
        detail = "the operator starts a new attempt of its rank pods, from the newest checkpoint when there is one"
    print(f"rectrainjob.{GROUP}/{args.name} {'suspended' if suspend else 'resumed'} (namespace {namespace}): {detail}")
    return 0


def cmd_suspend(args: argparse.Namespace) -> int:
    return _set_suspend(args, True)


def cmd_resume(args: argparse.Namespace) -> int:
    return _set_suspend(args, False)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubectl rectrain", description="Work with RecTrainJobs.")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    p.add_argument("-n", "--namespace", default=None)
    # -n/--kubeconfig also after the subcommand (kubectl style); SUPPRESS keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kubeconfig", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="namespace (default: the context's)")
    commands = p.add_subparsers(dest="command", required=True)
    submitting = commands.add_parser("submit", parents=[common], help="create (or update) the RecTrainJob(s) in a YAML file")
    submitting.add_argument("file", help="YAML file ('-': stdin)")
    submitting.add_argument("--watch", action="store_true", help="then watch the job until it ends")
    submitting.add_argument("--timeout", type=float, default=0, help="with --watch: give up after this many seconds")
    submitting.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    submitting.add_argument("--no-bar", action="store_true", help="with --watch: print lines instead of a bar")
    listing = commands.add_parser("list", parents=[common], help="RecTrainJobs with phase and progress")
    listing.add_argument("-A", "--all-namespaces", action="store_true")
    watching = commands.add_parser("watch", parents=[common], help="live progress of one job until it ends")
    watching.add_argument("name")
    watching.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (0: never)")
    watching.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    watching.add_argument("--no-bar", action="store_true", help="print a line per phase change instead of a bar")
    describing = commands.add_parser("describe", parents=[common], help="phase, conditions, restarts vs preemptions, progress, events")
    describing.add_argument("name")
    describing.add_argument("--events", type=int, default=20, help="show the last N events (0: all)")
    logging_ = commands.add_parser("logs", parents=[common], help="output of one rank of the current (or a given) attempt")
    logging_.add_argument("name")
    logging_.add_argument("--rank", type=int, default=0)
    logging_.add_argument("--attempt", type=int, default=None, help="default: the newest attempt")
    logging_.add_argument("--tail", type=int, default=0, help="last N lines only")
    deleting = commands.add_parser("delete", parents=[common], help="delete a job with its pods, Service and RBAC")
    deleting.add_argument("name")
    deleting.add_argument("--wait", action="store_true", help="return once the job is gone")
    deleting.add_argument("--timeout", type=float, default=60, help="with --wait: give up after this many seconds")
    suspending = commands.add_parser("suspend", parents=[common], help="stop a job's rank pods (they checkpoint); resume continues it")
    suspending.add_argument("name")
    resuming = commands.add_parser("resume", parents=[common], help="start a suspended job again")
    resuming.add_argument("name")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    commands = {"submit": cmd_submit, "list": cmd_list, "watch": cmd_watch, "describe": cmd_describe, "logs": cmd_logs,
                "delete": cmd_delete, "suspend": cmd_suspend, "resume": cmd_resume}
    try:
        return commands[args.command](args)
    except config.ConfigException as exc:
        return _fail(f"kubeconfig: {exc}")


if __name__ == "__main__":
    sys.exit(main())
