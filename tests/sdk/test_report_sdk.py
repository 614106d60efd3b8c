"""The reporting SDK (rectrain_report) against a real local HTTPS server standing in for the API
server's status subresource: the in-cluster path (token + CA files, KUBERNETES_SERVICE_HOST/PORT),
throttling, an API server that refuses and fails and then comes back, and a no-op outside a pod.
Its payload is validated against the API types, so the two cannot drift."""

from __future__ import annotations

import json
import math
import os
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rectrain_api import progress as progress_api
from rectrain_api import trainer_config
from rectrain_api.progress import Progress, TrainingMetrics
from support import wait_for

import rectrain_report
from rectrain_report import Reporter, payload, wire
from rectrain_report.payload import METRIC_FIELDS, ProgressTracker, clean_metrics
from rectrain_report.wire import Connection

JOB, NS, TOKEN = "ctr", "team-a", "token-abc"
STATUS_PATH = f"/apis/rectrain.io/v1alpha1/namespaces/{NS}/rectrainjobs/{JOB}/status"


# ---- a real HTTPS server with a self-signed certificate --------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"), "-out", str(d / "ca.crt")],
        check=True, capture_output=True,
    )
    return {"cert": d / "ca.crt", "key": d / "key.pem"}


class StatusServer:
    """Records PATCHes of the job's status; `mode` is "ok" (200) or "fail" (500). Stopping it and
    starting a new one on the same port plays an API server restart (connections refused between)."""

    def __init__(self, tls: dict[str, Path], port: int = 0):
        self.patches: list[dict] = []
        self.failed = 0
        self.mode = "ok"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = (server.mode == "ok" and self.path == STATUS_PATH
                      and self.headers["Content-Type"] == "application/merge-patch+json"
                      and self.headers["Authorization"] == f"Bearer {TOKEN}")
                if ok:
                    server.patches.append(json.loads(body))
                else:
                    server.failed += 1
                self.send_response(200 if ok else 500)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.allow_reuse_address = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls["cert"], tls["key"])
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def last(self, section: str) -> dict:
        return next(p["status"][section] for p in reversed(self.patches) if section in p["status"])


@pytest.fixture
def server(tls):
    s = StatusServer(tls)
    yield s
    s.stop()


@pytest.fixture
def pod_env(tls, tmp_path, monkeypatch, server) -> Path:
    """What a RecTrainJob's rank-0 pod has: job identity, the API server's address, a token and CA."""
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(TOKEN)
    (sa / "ca.crt").write_bytes(tls["cert"].read_bytes())
    for key, value in {"RECTRAIN_JOB_NAME": JOB, "RECTRAIN_JOB_NAMESPACE": NS, "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                       "KUBERNETES_SERVICE_PORT": str(server.port), "RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(wire, "SERVICE_ACCOUNT_DIR", str(sa))
    return sa


def in_pod_reporter(sa: Path, **kwargs) -> Reporter:
    return Reporter(connection=Connection.in_cluster(str(sa)), **kwargs)


# ---- the payload is the API's ---------------------------------------------------------------------


def test_payload_validates_against_the_api_models():
    tracker = ProgressTracker()
    tracker.progress(10, 100)
    progress = {**tracker.progress(step=40, total_steps=100, loss=0.4321, samples_per_second=1234.5, epoch=1),
                **tracker.checkpoint(40), **tracker.resumed(30, "6f1c-uid")}
    metrics = clean_metrics({"auc": 0.79, "logloss": 0.45, "rows_skipped": 3}, step=40)
    assert set(progress) == set(Progress.model_fields), "the SDK must fill every progress field"
    assert Progress.model_validate(progress).percent == 40.0
    assert TrainingMetrics.model_validate(metrics) == TrainingMetrics(auc=0.79, logloss=0.45, evalStep=40, rowsSkipped=3)
    assert set(METRIC_FIELDS) == set(TrainingMetrics.model_fields)
    assert payload.JOB_UID_MAX_LENGTH == progress_api.JOB_UID_MAX_LENGTH
    assert "checkpointJobUid" not in tracker.resumed(30, "x" * (payload.JOB_UID_MAX_LENGTH + 1))
    # The environment names the operator sets are the ones the SDK reads.
    assert (wire.JOB_NAME_ENV, wire.JOB_NAMESPACE_ENV, wire.JOB_UID_ENV, wire.CHECKPOINT_DIR_ENV) == (
        trainer_config.JOB_NAME_ENV, trainer_config.JOB_NAMESPACE_ENV, trainer_config.JOB_UID_ENV,
        trainer_config.CHECKPOINT_DIR_ENV)


def test_values_the_crd_would_refuse_are_left_out_not_sent():
    progress = ProgressTracker().progress(step=5, total_steps=4, loss=math.nan, samples_per_second=-1.0)
    assert "loss" not in progress and "samplesPerSecond" not in progress
    assert progress["percent"] == 100.0 and progress["etaSeconds"] == 0.0
    assert clean_metrics({"auc": 1.5, "logloss": math.inf, "ndcg": 0.3}, step=5) == {}
    Progress.model_validate(progress)


def test_eta_comes_from_the_step_rate_since_the_first_report():
    now = [100.0]
    tracker = ProgressTracker(clock=lambda: now[0])
    assert "etaSeconds" not in tracker.progress(200, 1000)  # a resumed run: no rate yet
    now[0] += 10.0
    p = tracker.progress(300, 1000)  # 10 steps/s, 700 to go
    assert p["etaSeconds"] == 70.0 and p["percent"] == 30.0


# ---- the wire path, throttled ------------------------------------------------------------------------


def test_reports_are_throttled_and_the_newest_values_arrive(server, pod_env):
    rep = in_pod_reporter(pod_env, interval=0.3)
    assert rep.enabled
    t0 = time.monotonic()
    for step in range(1, 201):
        rep.report(step=step, total_steps=200, loss=1.0 / step, epoch=0, metrics={"auc": 0.5 + step / 1000})
        time.sleep(0.005)  # a fast training loop, not a wait for state
    elapsed = time.monotonic() - t0
    rep.checkpoint(200)
    assert rep.close(timeout=5)
    assert 2 <= len(server.patches) <= elapsed / 0.3 + 3, f"{len(server.patches)} patches in {elapsed:.2f}s"
    progress, metrics = server.last("progress"), server.last("metrics")
    assert progress["step"] == 200 and progress["percent"] == 100.0 and progress["lastCheckpointStep"] == 200
    assert metrics == {"auc": 0.7, "evalStep": 200}
    Progress.model_validate(progress)


def test_module_functions_use_the_pods_environment(server, pod_env, monkeypatch):
    monkeypatch.setenv("RECTRAIN_REPORT_INTERVAL", "0.5")
    monkeypatch.setattr(rectrain_report, "_default", None)
    rectrain_report.report(step=3, total_steps=6, metrics={"auc": 0.61})
    rectrain_report.checkpoint(3)
    assert rectrain_report.close(timeout=5)
    assert server.last("progress")["step"] == 3 and server.last("progress")["lastCheckpointStep"] == 3
    assert server.last("metrics")["auc"] == 0.61


# ---- an API server that is down -----------------------------------------------------------------------


def test_api_down_then_back_training_never_blocks_and_the_latest_value_arrives(server, pod_env, tls):
    rep = in_pod_reporter(pod_env, interval=0.2, max_backoff=0.5, request_timeout=1.0)
    port = server.port
    server.mode = "fail"  # first it answers 500
    worst = 0.0

    def train(first: int, last: int) -> None:
        nonlocal worst
        for step in range(first, last + 1):
            t = time.monotonic()
            rep.report(step=step, total_steps=1000, metrics={"auc": step / 1000})
            worst = max(worst, time.monotonic() - t)
            time.sleep(0.002)

    train(1, 100)
    wait_for(lambda: server.failed >= 2, timeout=10, what="retries against a failing API server")
    server.stop()  # then it is gone: connections refused
    train(101, 400)
    time.sleep(0.6)  # training has ended its reports while nothing listens (the sender keeps retrying)
    assert rep.sender.patches_failed >= 3 and not server.patches
    back = StatusServer(tls, port=port)  # the API server restarts on its address; nothing new is reported
    try:
        wait_for(lambda: back.patches and back.last("progress")["step"] == 400, timeout=10,
                 what="the newest progress, retried in the background, after the API server came back")
        assert back.last("metrics")["auc"] == 0.4
        assert worst < 0.05, f"a report() call blocked for {worst:.3f}s"
    finally:
        rep.close(timeout=2)
        back.stop()


def test_close_is_bounded_when_the_api_never_answers(server, pod_env):
    rep = in_pod_reporter(pod_env, interval=0.2, request_timeout=0.5)
    server.mode = "fail"
    rep.report(step=1, total_steps=10)
    t = time.monotonic()
    assert rep.close(timeout=1.0) is False
    assert time.monotonic() - t < 1.0 + 0.5 + 1.5


# ---- outside a pod -------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["RECTRAIN_JOB_NAME", "KUBERNETES_SERVICE_HOST", "token"])
def test_does_nothing_outside_a_pod(server, pod_env, monkeypatch, missing):
    if missing == "token":
        (pod_env / "token").unlink()
    else:
        monkeypatch.delenv(missing)
    rep = Reporter()
    assert not rep.enabled
    rep.report(step=1, total_steps=2, metrics={"auc": 0.5})
    rep.checkpoint(1)
    assert rep.close() is True and server.patches == [] and server.failed == 0


def test_only_rank_0_reports(server, pod_env, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    assert not Reporter().enabled
    monkeypatch.setenv("RANK", "0")
    assert Reporter().enabled


def test_a_script_without_any_pod_environment_runs_unchanged():
    """A laptop: the SDK imports with the standard library only and every call is a no-op."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECTRAIN_", "KUBERNETES_"))}
    code = ("import sys, rectrain_report as rr; rr.report(step=1, total_steps=2, metrics={'auc': 0.5}); rr.checkpoint(1);"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('pydantic', 'kubernetes', 'rectrain_api', 'yaml')];"
            "print('loaded:', bad)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "loaded: []", out.stdout + out.stderr
