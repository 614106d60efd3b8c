"""Control-plane blip: restart the kube-apiserver alone (same etcd, same port) in the middle of a real
training job. The operator (same process, never restarted), the node agent and the trainer's status
reporter recover by themselves: the job is never restarted, progress keeps flowing into the status
after the blip and the job ends Succeeded with every step accounted for."""

from __future__ import annotations

import time

import pytest
from jobs_support import ProgressRecorder, job_manifest, kubectl_apply, trainer
from support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.slow]


def test_apiserver_restart_mid_job(harness, operator, kubeconfig, namespace, local_cluster, pods_can_run):
    if local_cluster is None:
        pytest.skip("restarting the API server needs the local cluster")
    section = trainer(rows=600_000, batch=512)
    section["training"]["epochs"] = 4  # still training well after the API server is back (about 15 s)
    kubectl_apply(kubeconfig, namespace, job_manifest("blip", section))
    recorder = ProgressRecorder(harness, "blip")
    recorder.start()
    try:
        wait_for(lambda: (harness.status("blip").get("progress") or {}).get("step", 0) >= 20, timeout=180,
                 what="training to get going")
        before = harness.status("blip")
        step_before = before["progress"]["step"]
        old = next(p for p in local_cluster.load_state().processes if p.name == "kube-apiserver")
        others = {p.name: p.pid for p in local_cluster.load_state().processes if p.name != "kube-apiserver"}

        blip_started = time.monotonic()
        new = local_cluster.restart_component("kube-apiserver")
        api_back = time.monotonic() - blip_started
        assert new.pid != old.pid and not old.alive() and new.alive()
        assert {p.name: p.pid for p in local_cluster.load_state().processes if p.name != "kube-apiserver"} == others, \
            "restart_component touched another process"

        # The trainer's reporter gets through again: progress beyond what it was before the blip.
        wait_for(lambda: (harness.status("blip").get("progress") or {}).get("step", 0) > step_before, timeout=60,
                 interval=0.05, what="a progress update after the blip")
        progress_back = time.monotonic() - blip_started
        status = harness.wait_phase("blip", "Succeeded", timeout=300)
    finally:
        recorder.done.set()
        recorder.join(5)

    print(f"apiserver blip: step at blip {step_before}; API ready after {api_back:.1f}s; "
          f"first progress update after {progress_back:.1f}s; final {status['progress']}")
    assert operator.proc.poll() is None, "the operator died in the blip"
    assert status.get("attempt", 0) == 0 and (status.get("restarts") or 0) == 0, "the blip restarted the gang"
    assert (status.get("failures") or 0) == 0 and (status.get("preemptions") or 0) == 0
    assert status["progress"]["step"] == status["progress"]["totalSteps"]
    steps = [s for _, s in recorder.samples]
    assert steps == sorted(steps), f"progress went backwards: {recorder.samples}"
    assert 0.6 < status["metrics"]["auc"] <= 1.0
    # The operator saw the end by itself (phase written by it) and its metrics still answer.
    assert operator.metrics() is not None
