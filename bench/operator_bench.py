#!/usr/bin/env python3
"""Operator benchmark (not a test): time from creating a RecTrainJob to all of its pods + Service
existing, against the floor: the same Kubernetes client creating the same children directly.

    .venv/bin/python bench/operator_bench.py                # 8, 64, 256 ranks and 50 jobs x 8 ranks, 3 repeats
    .venv/bin/python bench/operator_bench.py --repeats 5 --json out.json

Starts its own local control plane (rectrain_local.LocalCluster, no node agent, in a temporary
state dir), installs the CRD and runs `rectrain-operator` as a subprocess watching one namespace.
Pods name a scheduler that does not exist, so nothing else touches them.

- operator: create the RecTrainJob(s), stop the clock when a pod watch has seen every rank pod
  (the Service is created before the pods and is checked afterwards). The floors stop their clock
  on the same watch.
- floor: the children the operator's own pure builders render (ServiceAccount, Role, RoleBinding,
  Service, one Pod per rank, in the operator's order) created with the operator's own cluster layer
  (`Cluster.create`: the same client, the same request code), nothing else: no job read, no pod
  list, no status patch, no Event (50 x 8: 4 jobs at a time, like the operator's 4 workers). A
  job's first pod waits until a ServiceAccount watch has seen the token (1.20 refuses pods before;
  the wait costs no request) and is retried every 10 ms should the API server's cache lag.
  `floor`: one request after another; `floor-c8` (--floor-concurrency): a job's pods after the
  first 8 in flight, as the operator sends them. floor-c8 is the floor at the operator's own
  concurrency, and the targets are stated against it; the sequential floor is slower on bursts
  and would flatter the operator.
- requests/job: apiserver_request_total (resource requests, all verbs but WATCH) from the API
  server's /metrics, from before a case until the API server has been quiet for --quiet seconds
  after it (so requests the operator makes after the clock stops, such as status updates, are
  counted), divided by the jobs; it includes the controller-manager's own requests in that window
  (token Secret for the new ServiceAccount, Endpoints etc.), in every column. --breakdown prints
  them by verb, resource and code for the first repeat.
- RSS: VmRSS/VmHWM of the operator process from /proc after each case.

Each case runs --repeats times, the variants' order rotating per repeat; the table shows medians.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NO_SCHEDULER = "rectrain-bench-no-scheduler"
OPERATOR_WORKERS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float = 60.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001
            last = exc
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what} ({last!r})")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def proc_mem(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, v = line.split(":")
            vals[key] = int(v.split()[0]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


class Bench:
    def __init__(self, args):
        from kubernetes import client, config

        from rectrain_api import crd
        from rectrain_api import job as api
        from rectrain_local.cluster import LocalCluster

        self.args, self.client, self.api, self.crd = args, client, api, crd
        self.tmp = Path(tempfile.mkdtemp(prefix="rectrain-opbench-"))
        self.cluster = LocalCluster(self.tmp / "state")
        t0 = time.monotonic()
        self.cluster.up(fresh=True, node=False)
        print(f"# local control plane up in {time.monotonic() - t0:.1f}s", flush=True)
        self.kubeconfig = str(self.cluster.kubeconfig)
        cfg = client.Configuration()
        config.load_kube_config(config_file=self.kubeconfig, client_configuration=cfg)
        # Room for every request in flight (floor-c8 on bursts: 4 jobs x 8 pods), as the operator has
        # (cluster.CONNECTION_POOL_SIZE): beyond the pool urllib3 opens and drops a TLS connection per request.
        cfg.connection_pool_maxsize = 64
        self.ac = client.ApiClient(cfg)
        self.core = client.CoreV1Api(self.ac)
        self.rbac = client.RbacAuthorizationV1Api(self.ac)
        self.custom = client.CustomObjectsApi(self.ac)
        self.op_ns, self.base_ns, self.floor_ns = "rtb-operator", "rtb-baseline", "rtb-floor"
        for ns in (self.op_ns, self.base_ns, self.floor_ns):
            self.core.create_namespace({"metadata": {"name": ns}})
            wait_for(lambda ns=ns: self.core.read_namespaced_service_account("default", ns).secrets, what=f"{ns} token")
        self.install_crd()
        self.procs: dict[str, subprocess.Popen] = {}
        self.op_namespaces: dict[str, str] = {}
        self.log_paths: dict[str, Path] = {}

    # ------------------------------------------------------------------ setup
    def install_crd(self) -> None:
        import yaml

        ext = self.client.ApiextensionsV1Api(self.ac)
        body = yaml.safe_load(self.crd.render())
        ext.create_custom_resource_definition(body)

        def established():
            conds = ext.read_custom_resource_definition(body["metadata"]["name"]).status.conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conds)

        wait_for(established, what="CRD established")
        api = self.api
        wait_for(lambda: self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, self.op_ns, api.PLURAL) is not None,
                 what="CRD served")

    def start_operator(self, variant: str, ns: str, source: Path | None = None) -> subprocess.Popen:
        """`rectrain-operator` watching `ns`; `source`: a directory whose rectrain_operator package is used instead."""
        live = free_port()
        log_path = self.tmp / f"{variant}.log"
        log = open(log_path, "ab")
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        if source:
            env["PYTHONPATH"] = str(source) + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.Popen(
            [sys.executable, "-m", "rectrain_operator.main", "--namespace", ns, "--metrics-port", "0",
             "--liveness-endpoint", f"http://127.0.0.1:{live}/healthz", "--resync-seconds", "600", "--workers", str(OPERATOR_WORKERS)],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def healthy():
            assert proc.poll() is None, log_path.read_text()[-2000:]
            with urllib.request.urlopen(f"http://127.0.0.1:{live}/healthz", timeout=1) as rsp:
                return rsp.status == 200

        wait_for(healthy, timeout=60, what="operator liveness")
        self.procs[variant] = proc
        self.op_namespaces[variant] = ns
        self.log_paths[variant] = log_path
        return proc

    def close(self, keep: bool = False) -> None:
        """Stop the operators and the control plane; the temporary state (etcd, logs: a few hundred MB)
        is removed unless `keep` (a failed run, whose operator logs the error names)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        try:
            self.ac.close()
        finally:
            self.cluster.down(quiet=True)
            if keep:
                print(f"# state and operator logs kept in {self.tmp}", file=sys.stderr)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ helpers
    def request_counts(self) -> dict[str, float]:
        """apiserver_request_total of resource requests (not WATCH, not /metrics itself) by verb/resource/code."""
        cfg = self.ac.configuration
        headers = {"Authorization": cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix("BearerToken")}
        rsp = self.ac.rest_client.request("GET", cfg.host + "/metrics", headers=headers)
        rsp.read()
        text = rsp.data.decode()
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = {k: v.strip('"') for k, v in (kv.split("=", 1) for kv in line[line.index("{") + 1:line.rindex("}")].split(",") if "=" in kv)}
            if labels.get("verb") == "WATCH" or not labels.get("resource"):  # watches; /metrics, /healthz etc.
                continue
            key = " ".join(v for v in (labels.get(k, "") for k in ("verb", "resource", "subresource", "code")) if v)
            counts[key] = counts.get(key, 0.0) + float(line.rpartition(" ")[2])
        return counts

    def requests_total(self) -> float:
        return sum(self.request_counts().values())

    def requests_after(self, before: dict[str, float]) -> tuple[float, dict[str, float]]:
        """Requests since `before`, once the API server has been quiet for --quiet seconds (at most --timeout)."""
        deadline = time.monotonic() + self.args.timeout
        last, last_change = self.request_counts(), time.monotonic()
        while time.monotonic() - last_change < self.args.quiet and time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.request_counts()
            if sum(now.values()) != sum(last.values()):
                last, last_change = now, time.monotonic()
        delta = {k: v - before.get(k, 0.0) for k, v in last.items() if v - before.get(k, 0.0) > 0}
        return sum(delta.values()), delta

    def job_body(self, name: str, ranks: int) -> dict:
        api = self.api
        return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name},
                "spec": {"image": "rectrain:bench", "replicas": ranks, "scheduling": {"schedulerName": NO_SCHEDULER}}}

    def watch_pods(self, ns: str, expected: dict[str, int], rv: str) -> tuple[threading.Thread, dict]:
        """Background pod watch; result['t'] = perf_counter when every job has `expected` pods."""
        from kubernetes import watch

        api = self.api
        result: dict = {"t": None, "error": None}
        seen: dict[str, set] = {j: set() for j in expected}
        ready = threading.Event()

        def run():
            w = watch.Watch()
            try:
                ready.set()
                # deserialize=False: plain dicts. The typed client parses each pod into pydantic models
                # (milliseconds of CPU each, in this process, during the operator's cases only).
                for ev in w.stream(self.core.list_namespaced_pod, ns, resource_version=rv, label_selector=api.LABEL_JOB_NAME,
                                   timeout_seconds=int(self.args.timeout), allow_watch_bookmarks=False, deserialize=False):
                    if ev["type"] != "ADDED":
                        continue
                    meta = ev["object"].get("metadata") or {}
                    job = (meta.get("labels") or {}).get(api.LABEL_JOB_NAME)
                    if job in seen:
                        seen[job].add(meta.get("name"))
                        if all(len(seen[j]) >= n for j, n in expected.items()):
                            result["t"] = time.perf_counter()
                            w.stop()
                            return
            except Exception as exc:  # noqa: BLE001
                result["error"] = exc

        t = threading.Thread(target=run, daemon=True)
        t.start()
        ready.wait()
        return t, result

    def cleanup(self, ns: str) -> None:
        api = self.api
        if ns != self.floor_ns:
            self.custom.delete_collection_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL)
            wait_for(lambda: not self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL)["items"],
                     what="jobs deleted")
        sel = api.LABEL_JOB_NAME
        self.core.delete_collection_namespaced_pod(ns, label_selector=sel, grace_period_seconds=0)
        for svc in self.core.list_namespaced_service(ns, label_selector=sel).items:
            try:  # the garbage collector may have deleted it meanwhile
                self.core.delete_namespaced_service(svc.metadata.name, ns, _preload_content=False)
            except self.client.ApiException as exc:
                if exc.status != 404:
                    raise
        self.core.delete_collection_namespaced_service_account(ns, label_selector=sel)
        self.rbac.delete_collection_namespaced_role(ns, label_selector=sel)
        self.rbac.delete_collection_namespaced_role_binding(ns, label_selector=sel)
        if ns == self.floor_ns:
            self.custom.delete_collection_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL)
        wait_for(lambda: not self.core.list_namespaced_pod(ns, label_selector=sel).items, timeout=120, what="pods deleted")
        time.sleep(self.args.settle)
        self.requests_after(self.request_counts())  # the garbage collector and controllers done with the deletions

    # ------------------------------------------------------------------ cases
    def run_operator(self, variant: str, tag: str, jobs: int, ranks: int) -> dict:
        api, ns = self.api, self.op_namespaces[variant]
        names = [f"op-{tag}-{i}" for i in range(jobs)]
        rv = self.core.list_namespaced_pod(ns, limit=1).metadata.resource_version
        before = self.request_counts()
        thread, result = self.watch_pods(ns, {n: ranks for n in names}, rv)
        t0 = time.perf_counter()
        if jobs == 1:
            self.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL, self.job_body(names[0], ranks))
        else:
            with cf.ThreadPoolExecutor(8) as ex:
                list(ex.map(lambda n: self.custom.create_namespaced_custom_object(
                    api.GROUP, api.VERSION, ns, api.PLURAL, self.job_body(n, ranks)), names))
        thread.join(self.args.timeout)
        if result["t"] is None:
            raise RuntimeError(f"{variant} case {tag}: pods not all seen ({result['error']!r}); log {self.log_paths[variant]}")
        seconds = result["t"] - t0
        reqs, by_kind = self.requests_after(before)  # including what follows the creates (status patches etc.)
        # The bench's own job creates are not the operator's work (the floor's are made before it counts).
        reqs -= by_kind.pop("POST rectrainjobs 201", 0.0)
        missing = [n for n in names if not self.core.list_namespaced_service(ns, field_selector=f"metadata.name={n}").items]
        if missing:
            raise RuntimeError(f"operator case {tag}: no Service for {missing[:3]}")
        rss, hwm = proc_mem(self.procs[variant].pid)
        return {"seconds": seconds, "requests_per_job": reqs / jobs, "rss_mb": rss, "hwm_mb": hwm,
                "requests_by_kind_per_job": {k: v / jobs for k, v in sorted(by_kind.items())}}

    def children(self, name: str, ranks: int) -> tuple[list[dict], list[dict]]:
        """(non-pod children, pods) as the operator's builders render them, owned by a real (unwatched) job,
        in the order the operator creates them."""
        from rectrain_operator import builders, reconciler

        api = self.api
        job = self.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, self.floor_ns, api.PLURAL, self.job_body(name, ranks))
        spec = api.RecTrainJobSpec.model_validate(job["spec"])
        ref = builders.JobRef(name, self.floor_ns, job["metadata"]["uid"])
        others = [builders.build_service(spec, ref), *builders.build_rbac(ref)]
        order = getattr(reconciler, "child_order", None)  # the operator's order of the non-pod children
        return (order(others) if order else others), builders.build_pods(spec, ref, 0)

    def watch_tokens(self, ns: str, rv: str):
        """A background ServiceAccount watch; returns (token, stop): token(name) is a threading.Event set once
        that account has its token Secret (1.20 refuses pods until then). Waiting on it costs the floor no
        request; polling would."""
        from kubernetes import watch

        tokens: dict[str, threading.Event] = {}
        lock, stop = threading.Lock(), threading.Event()

        def token(name: str) -> threading.Event:
            with lock:
                return tokens.setdefault(name, threading.Event())

        def run():
            try:
                for ev in watch.Watch().stream(self.core.list_namespaced_service_account, ns, resource_version=rv,
                                               timeout_seconds=int(self.args.timeout), deserialize=False):
                    if ev["object"].get("secrets"):
                        token(ev["object"]["metadata"]["name"]).set()
                    if stop.is_set():
                        return
            except Exception:  # noqa: BLE001 - the floor then falls back to retrying its first pod
                pass

        threading.Thread(target=run, daemon=True).start()
        return token, stop

    def create_direct(self, obj: dict) -> None:
        from rectrain_operator.cluster import ChildError, Cluster

        if not hasattr(self, "_cluster"):
            self._cluster = Cluster(self.ac)
        while True:
            try:
                self._cluster.create(obj)
                return
            except ChildError as exc:  # the ServiceAccount's token is not minted yet: retry, as the operator does
                text = (exc.detail or "").lower()
                if exc.status in (403, 409, 500) and ("serviceaccount" in text or "service account" in text):
                    time.sleep(0.01)
                    continue
                raise

    def run_floor(self, tag: str, jobs: int, ranks: int, concurrent: int = 1) -> dict:
        """concurrent=1: one create after another; N: a job's pods N at a time (after the first)."""
        names = [f"fl-{tag}-{i}" for i in range(jobs)]
        rendered = [self.children(n, ranks) for n in names]  # not timed
        time.sleep(self.args.settle)  # the jobs' own creation is not the floor's work
        ns = self.floor_ns
        rv = self.core.list_namespaced_pod(ns, limit=1).metadata.resource_version
        before = self.request_counts()
        # The clock stops as in the operator's cases: when the same pod watch has seen every pod.
        thread, result = self.watch_pods(ns, {n: ranks for n in names}, rv)
        token, stop_tokens = self.watch_tokens(ns, rv)

        def one(job):
            others, pods = job
            for obj in others:
                self.create_direct(obj)
            account = pods[0]["spec"].get("serviceAccountName")
            if account:  # wait for its token (watched), then create; create_direct still retries a lagging cache
                token(account).wait(self.args.timeout)
            self.create_direct(pods[0])
            if concurrent > 1 and len(pods) > 1:
                with cf.ThreadPoolExecutor(min(concurrent, len(pods) - 1)) as ex:
                    list(ex.map(self.create_direct, pods[1:]))
            else:
                for obj in pods[1:]:
                    self.create_direct(obj)

        t0 = time.perf_counter()
        if jobs == 1:
            one(rendered[0])
        else:
            with cf.ThreadPoolExecutor(OPERATOR_WORKERS) as ex:
                list(ex.map(one, rendered))
        thread.join(self.args.timeout)
        stop_tokens.set()
        if result["t"] is None:
            raise RuntimeError(f"floor case {tag}: pods not all seen ({result['error']!r})")
        seconds = result["t"] - t0
        reqs, by_kind = self.requests_after(before)
        return {"seconds": seconds, "requests_per_job": reqs / jobs,
                "requests_by_kind_per_job": {k: v / jobs for k, v in sorted(by_kind.items())}}


def baseline_source(ref: str, dest: Path) -> Path:
    """operator/rectrain_operator as of git `ref`, extracted under dest (for a before/after run)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "operator/rectrain_operator"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "operator"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 64, 256], help="single-job sizes")
    ap.add_argument("--many", type=int, nargs=2, default=[50, 8], metavar=("JOBS", "RANKS"), help="jobs created at once x ranks (0 0: skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-ref", metavar="GIT_REF",
                    help="also run the operator package as of this git ref (e.g. HEAD) side by side: before/after")
    ap.add_argument("--baseline-dir", metavar="DIR",
                    help="like --baseline-ref, with the rectrain_operator package found in DIR (a directory holding it)")
    ap.add_argument("--floor-concurrency", type=int, default=8,
                    help="also measure a floor with this many pod creates in flight per job (0: skip)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds of quiet after each cleanup")
    ap.add_argument("--quiet", type=float, default=1.5,
                    help="a case's requests are counted until the API server has had no request for this long")
    ap.add_argument("--breakdown", action="store_true", help="print the first repeat's requests per job by verb/resource/code")
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    cases = [(1, r) for r in args.ranks] + ([tuple(args.many)] if args.many[0] > 0 else [])
    fc = args.floor_concurrency
    baseline = bool(args.baseline_ref or args.baseline_dir)
    variants = ["floor"] + ([f"floor-c{fc}"] if fc > 1 else []) + ["operator"] + (["baseline"] if baseline else [])
    bench = Bench(args)
    results: dict[str, dict] = {}
    load_before = loadavg()
    try:
        bench.start_operator("operator", bench.op_ns)
        if baseline:
            source = Path(args.baseline_dir) if args.baseline_dir else baseline_source(args.baseline_ref, bench.tmp / "baseline")
            bench.start_operator("baseline", bench.base_ns, source)
        time.sleep(1.0)  # let the watches settle
        idle_rss = {v: proc_mem(p.pid)[0] for v, p in bench.procs.items()}
        print(f"# operator idle RSS {idle_rss} MB", flush=True)
        for rep in range(args.repeats):
            for jobs, ranks in cases:
                key = f"{jobs}x{ranks}"
                row = results.setdefault(key, {"jobs": jobs, "ranks": ranks, **{v: [] for v in variants}})
                order = variants[rep % len(variants):] + variants[:rep % len(variants)]
                for which in order:
                    tag = f"{jobs}x{ranks}-r{rep}"
                    if which.startswith("floor"):
                        r = bench.run_floor(tag + which[5:], jobs, ranks, fc if which != "floor" else 1)
                        bench.cleanup(bench.floor_ns)
                    else:
                        r = bench.run_operator(which, tag, jobs, ranks)
                        bench.cleanup(bench.op_namespaces[which])
                    r["load"] = loadavg()
                    row[which].append(r)
                    if args.json:  # keep what we have, should a later case fail
                        Path(args.json).write_text(json.dumps({"partial": True, "cases": results}, indent=2) + "\n")
                    print(f"  rep {rep} {key:>7} {which:<9} {r['seconds']:7.3f}s  {r['requests_per_job']:7.1f} req/job"
                          + (f"  rss {r['rss_mb']:.0f} MB" if "rss_mb" in r else "") + f"  load {r['load']}", flush=True)
                    if args.breakdown and rep == 0:
                        print("      " + ", ".join(f"{k}: {v:.2f}" for k, v in r["requests_by_kind_per_job"].items()), flush=True)
        end_rss = {v: proc_mem(p.pid) for v, p in bench.procs.items()}
        failed = False
    except BaseException:
        failed = True
        raise
    finally:
        bench.close(keep=failed)

    med = statistics.median
    print()
    print(f"# rectrain operator benchmark  {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"kube-apiserver v1.20.2 (local, etcd --unsafe-no-fsync), operator --workers {OPERATOR_WORKERS}")
    print("# floor: the operator's builders' manifests created directly with its cluster layer, one after another"
          + (f"; floor-c{fc}: pods {fc} in flight, the operator's own concurrency (targets are against it)" if fc > 1 else "")
          + (f"; baseline: operator at {args.baseline_ref or args.baseline_dir}" if baseline else ""))
    print(f"# medians of {args.repeats} runs; load average (1/5/15 min) before {load_before}, after {loadavg()}")
    ops = [v for v in variants if not v.startswith("floor")]
    floors = [v for v in variants if v.startswith("floor")]
    head = f"{'case':<8}" + "".join(f" {v + ' s':>12}" for v in variants)
    head += "".join(f" {o + '/' + f:>18}" for o in ops for f in floors) + "".join(f" {v + ' req/job':>17}" for v in variants)
    print(head + "  target")
    same = f"floor-c{fc}" if fc > 1 else "floor"  # the floor at the operator's concurrency
    targets = {"1x64": f"operator <= 1.2x {same} and <= 1 s"}
    if tuple(args.many) == (50, 8):
        targets["50x8"] = f"operator <= 10 s and <= 1.2x {same}"
    for key, row in results.items():
        m = {v: med(x["seconds"] for x in row[v]) for v in variants}
        reqs = {v: med(x["requests_per_job"] for x in row[v]) for v in variants}
        row["median_seconds"], row["median_requests_per_job"] = m, reqs
        row["ratios"] = {f"{o}/{f}": m[o] / m[f] for o in ops for f in floors}
        line = f"{key:<8}" + "".join(f" {m[v]:>12.3f}" for v in variants)
        line += "".join(f" {row['ratios'][o + '/' + f]:>17.2f}x" for o in ops for f in floors)
        line += "".join(f" {reqs[v]:>17.1f}" for v in variants)
        print(line + "  " + targets.get(key, ""))
    for v in ops:
        print(f"{v} RSS: idle {idle_rss[v]:.0f} MB, at end {end_rss[v][0]:.0f} MB, peak (VmHWM) {end_rss[v][1]:.0f} MB  (target <= 200 MB)")
    if args.json:
        out = {"machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
               "config": vars(args), "load_before": load_before, "load_after": loadavg(),
               "operator_rss_mb": {v: {"idle": idle_rss[v], "end": end_rss[v][0], "peak": end_rss[v][1]} for v in ops},
               "cases": results}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
