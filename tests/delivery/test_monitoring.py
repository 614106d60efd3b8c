"""A real Prometheus (Debian's package, run as a subprocess on loopback) scrapes a real rectrain-operator
and a real rectrain-train; every PromQL query of the Grafana dashboard is evaluated against it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from delivery_support import BIN, REPO
from support import wait_for

DASHBOARD = REPO / "deploy" / "grafana" / "rectrain-dashboard.json"
SCRAPE = REPO / "deploy" / "grafana" / "prometheus-scrape.yaml"
# Grafana's built-in variables, as Grafana would expand them for a 5-minute view.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "$namespace": ".*", "$job": ".*"}


def _cache_dir() -> Path:
    return Path(os.environ.get("RECTRAIN_CACHE_DIR", Path.home() / ".cache" / "rectrain"))


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    """Debian's prometheus binary. When the machine has none, the package is fetched with apt and
    unpacked into the cache (not installed: no system service is started or left behind)."""
    found = shutil.which("prometheus")
    if found:
        return Path(found)
    target = _cache_dir() / "prometheus-deb"
    binary = target / "usr" / "bin" / "prometheus"
    if (target / ".complete").exists() and binary.exists():
        return binary
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        pytest.skip("prometheus is not installed and apt-get/dpkg-deb are unavailable to fetch Debian's package")
    with tempfile.TemporaryDirectory() as tmp:
        download = ["apt-get", "download", "-q", "prometheus"]
        if subprocess.run(download, cwd=tmp, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=True)
            subprocess.run(download, cwd=tmp, capture_output=True, check=True)
        (deb,) = Path(tmp).glob("prometheus_*.deb")
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
    (target / ".complete").touch()
    return binary


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, binary: Path, workdir: Path, scrape_configs: list[dict]):
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
                  "scrape_configs": scrape_configs}
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(binary), f"--config.file={self.config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._ready, timeout=30, what="prometheus /-/ready")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited: {self.log.read_text()[-2000:]}"
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as rsp:
            return rsp.status == 200

    def api(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as rsp:
                body = json.load(rsp)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        return body

    def query(self, expr: str) -> list[dict]:
        body = self.api("query", query=expr)
        assert body["status"] == "success", f"{expr}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def expand(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unexpanded Grafana variable in {expr}"
    return expr


# ------------------------------------------------------------------------------ static


def test_dashboard_covers_what_platform_teams_ask_for():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = " ".join(e for _, e in dashboard_queries())
    for metric in ("rectrain_jobs", "rectrain_job_restarts_total", "rectrain_job_time_to_running_seconds_bucket",
                   "rectrain_trainer_samples_per_second", "rectrain_trainer_loss", "rectrain_jobs_finished_total"):
        assert re.search(rf"\b{metric}\b", exprs), metric
    assert "sum by (phase)" in exprs and "sum by (cause)" in exprs and "by (namespace, rectrain_job)" in exprs
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "namespace", "job"]


def test_scrape_config_passes_promtool(prometheus_bin, tmp_path):
    """promtool checks the scrape jobs and their relabel rules. Debian builds Prometheus without
    Kubernetes service discovery, so kubernetes_sd_configs is swapped for a static target here."""
    promtool = prometheus_bin.with_name("promtool")
    config = tmp_path / "prometheus.yml"
    jobs = yaml.safe_load(SCRAPE.read_text())
    for job in jobs:
        (sd,) = job.pop("kubernetes_sd_configs")
        assert sd["role"] in {"pod", "endpoints"}
        job["static_configs"] = [{"targets": ["127.0.0.1:9400"]}]
    config.write_text(yaml.safe_dump({"scrape_configs": jobs}))
    result = subprocess.run([str(promtool), "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {c["job_name"]: c for c in yaml.safe_load(SCRAPE.read_text())}
    labels = {r.get("target_label") for r in jobs["rectrain-trainer"]["relabel_configs"]}
    assert {"namespace", "rectrain_job", "__address__"} <= labels  # what the dashboard groups by


# ------------------------------------------------------------------------------ live


TRAINER_CONFIG = {
    "model": {"embeddingDim": 8, "tableSizes": [100] * 26, "numDenseFeatures": 13, "bottomMlp": [16, 8], "topMlp": [16]},
    "data": {"source": "synthetic", "synthetic": {"rows": 200000, "evalRows": 2000, "seed": 7}},
    "training": {"epochs": 50, "batchSize": 256, "evalEverySteps": 20, "dataLoaderWorkers": 0,
                 "optimizer": {"sparse": "adagrad", "dense": "adagrad", "learningRate": 0.01}},
    "reporting": {"logEverySteps": 1000},
}


@pytest.mark.cluster
@pytest.mark.slow
def test_prometheus_scrapes_operator_and_trainer_and_dashboard_queries_evaluate(prometheus_bin, kubeconfig, k8s_api, namespace, tmp_path):
    from rtj_harness import Harness, Operator, install_crd

    install_crd(k8s_api)
    op = Operator(kubeconfig, namespace, tmp_path / "operator.log").start()
    trainer = prom = None
    try:
        # Operator activity, so its counters and histograms have series: a job runs, fails once, is restarted.
        h = Harness(k8s_api, namespace)
        h.create_job("watched", replicas=1, runPolicy={"backoffLimit": 3, "restartBackoff": {"initialSeconds": 0}})
        (pod,) = h.wait_pods("watched", 1, attempt=0)
        h.run(pod.metadata.name)
        h.wait_phase("watched", "Running")
        h.exit(pod.metadata.name, 1)
        h.wait_pods("watched", 1, attempt=1, timeout=30)

        # A real trainer, its /metrics on loopback.
        trainer_port = free_port()
        cfg = {**TRAINER_CONFIG, "reporting": {**TRAINER_CONFIG["reporting"], "metricsPort": trainer_port}}
        (tmp_path / "trainer.yaml").write_text(yaml.safe_dump(cfg))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECTRAIN_JOB")}
        env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        with open(tmp_path / "trainer.log", "wb") as log:
            trainer = subprocess.Popen([str(BIN / "rectrain-train"), "--config", str(tmp_path / "trainer.yaml"), "--progress", "off"],
                                       env=env, stdout=log, stderr=subprocess.STDOUT)

        def trainer_serving() -> bool:
            assert trainer.poll() is None, (tmp_path / "trainer.log").read_text()[-3000:]
            with urllib.request.urlopen(f"http://127.0.0.1:{trainer_port}/metrics", timeout=2) as rsp:
                return b"rectrain_trainer_step" in rsp.read()

        wait_for(trainer_serving, timeout=90, what="the trainer's /metrics")

        prom = Prometheus(prometheus_bin, tmp_path, [
            {"job_name": "rectrain-operator", "static_configs": [{"targets": [f"127.0.0.1:{op.metrics_port}"]}]},
            {"job_name": "rectrain-trainer", "static_configs": [{"targets": [f"127.0.0.1:{trainer_port}"],
                                                                 "labels": {"namespace": namespace, "rectrain_job": "local-dlrm"}}]},
        ])

        def targets_up() -> bool:
            return {r["metric"]["job"] for r in prom.query("up == 1")} == {"rectrain-operator", "rectrain-trainer"}

        wait_for(targets_up, timeout=30, what="both scrape targets up")
        # Series arrive with the values the processes report.
        created = wait_for(lambda: prom.query(f'rectrain_jobs_created_total{{namespace="{namespace}"}}'), timeout=20, what="jobs created series")
        assert float(created[0]["value"][1]) >= 1
        restarts = wait_for(lambda: prom.query(f'rectrain_job_restarts_total{{namespace="{namespace}",cause="failure"}} >= 1'),
                            timeout=20, what="a failure restart counted")
        assert restarts
        wait_for(lambda: prom.query("rectrain_job_time_to_running_seconds_count >= 1"), timeout=20, what="time-to-running observed")
        wait_for(lambda: prom.query("sum(rectrain_jobs) >= 1"), timeout=30, what="the resync counting the job by phase")
        wait_for(lambda: prom.query('rectrain_trainer_step{rectrain_job="local-dlrm"} > 0'), timeout=60, what="trainer steps")
        wait_for(lambda: prom.query('rectrain_trainer_samples_per_second{rectrain_job="local-dlrm"} > 0'), timeout=60, what="trainer throughput")
        wait_for(lambda: prom.query("rectrain_trainer_eval_auc > 0"), timeout=60, what="trainer eval AUC")
        # Enough samples for rate() over the dashboard's window.
        wait_for(lambda: prom.query("count_over_time(up[1m]) >= 3"), timeout=30, what="a few scrapes")

        # Every dashboard query is valid PromQL and evaluates; those about what ran here return data.
        results = {}
        for title, expr in dashboard_queries():
            results[expr] = prom.query(expand(expr))
        must_have_data = {
            "sum by (phase) (rectrain_jobs)": lambda r: {x["metric"]["phase"] for x in r} >= {"Pending", "Running", "Restarting", "Failed"}
                                                      and sum(float(x["value"][1]) for x in r) >= 1,
            "by (cause)": lambda r: any(x["metric"].get("cause") == "failure" for x in r),
            "rectrain_trainer_samples_per_second": lambda r: any(x["metric"].get("rectrain_job") == "local-dlrm" and float(x["value"][1]) > 0 for x in r),
            "rectrain_trainer_loss": lambda r: any(x["metric"].get("rectrain_job") == "local-dlrm" for x in r),
            "rectrain_trainer_eval_auc": lambda r: any(0.0 < float(x["value"][1]) <= 1.0 for x in r),
        }
        for needle, check in must_have_data.items():
            matching = [e for e in results if needle in e]
            assert matching, needle
            for expr in matching:
                assert check(results[expr]), f"{expr}: {results[expr]}"
        # The namespace variable's label_values() source exists.
        values = prom.api("label/namespace/values", **{"match[]": "rectrain_jobs_created_total"})
        assert namespace in values["data"]
    finally:
        if prom:
            prom.stop()
        if trainer and trainer.poll() is None:
            trainer.send_signal(signal.SIGTERM)
            try:
                trainer.wait(timeout=20)
            except subprocess.TimeoutExpired:
                trainer.kill()
                trainer.wait(timeout=10)
        op.kill()
