"""Failed attempts keep their evidence, and a stalled rendezvous surfaces (real operator, real trainer
on the local node):

* a rank that crashes on its first attempt: its log's tail (the kubelet-style termination message)
  reaches status.lastFailure.message and the Event; its stopped pod is kept, so its log can be read,
  until the next attempt runs; then `kubectl rectrain logs --attempt 0` says why the log is gone;
* a rank that never joins the rendezvous: condition Stalled and a Stalled Event after
  runPolicy.rendezvousTimeoutSeconds, and the job fails (backoffLimit 0);
* a simulated spot reclaim (DisruptionTarget condition, then eviction): reported as that eviction,
  with its reason and message, not as a generic deletion.
"""

from __future__ import annotations

import contextlib
import io

import pytest
from jobs_support import job_manifest, kubectl_apply, reclaim, trainer
from support import is_gone, wait_for

# The trainer process of the chosen rank (one per pod: procsPerReplica 1) runs it first.
CRASH_ON_FIRST_ATTEMPT = (
    "import os, sys\n"
    "if os.environ.get('RANK') == '1' and os.environ.get('ATTEMPT') == '0':\n"
    "    print('evidence: the disk is on fire', file=sys.stderr, flush=True)\n"
    "    os._exit(7)\n"
)
NEVER_JOIN = (
    "import os, time\n"
    "if os.environ.get('RANK') == '1':\n"
    "    time.sleep(3600)\n"
)


def _job_with_sitecustomize(name: str, script: str, **run_policy) -> tuple[dict, dict]:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"sitecustomize.py": script}}
    manifest = job_manifest(name, trainer(rows=2000, batch=100), backoff_limit=1)
    manifest["spec"]["runPolicy"].update(run_policy)
    manifest["spec"]["pod"] = {
        "volumes": [{"name": "site", "configMap": {"name": name}}],
        "volumeMounts": [{"name": "site", "mountPath": "/site", "readOnly": True}],
        "env": [{"name": "PYTHONPATH", "value": "/site"},
                {"name": "ATTEMPT", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['rectrain.io/attempt']"}}}],
    }
    return config_map, manifest


def _plugin_logs(kubeconfig: str, namespace: str, *args: str) -> tuple[int, str, str]:
    from rectrain_kubectl.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--kubeconfig", kubeconfig, "logs", *args, "-n", namespace])
    return code, out.getvalue(), err.getvalue()


def test_a_crashed_ranks_log_survives_the_gang_restart(harness, operator, kubeconfig, namespace):
    core = harness.core
    # The backoff leaves time to read the kept pod before the next attempt runs.
    kubectl_apply(kubeconfig, namespace, *_job_with_sitecustomize("crash", CRASH_ON_FIRST_ATTEMPT,
                                                                 restartBackoff={"initialSeconds": 8, "maxSeconds": 8}))
    def failed_once():
        status = harness.status("crash")
        assert status.get("phase") != "Succeeded", f"rank 1 did not crash: {status}"
        return status.get("lastFailure") and status

    status = wait_for(failed_once, timeout=180, what="the first failure")
    last = status["lastFailure"]
    assert (last["rank"], last["exitCode"]) == (1, 7) and "the disk is on fire" in last["message"], last
    wait_for(lambda: any("the disk is on fire" in m for _, _, m in harness.events("crash")), what="the Event with the log tail")

    # The crashed pod is kept (stopped), its log readable through the API, while the restart waits.
    crashed = core.read_namespaced_pod("crash-1-a0", namespace)
    assert crashed.status.phase == "Failed"
    assert "the disk is on fire" in core.read_namespaced_pod_log("crash-1-a0", namespace)
    code, out, _ = _plugin_logs(kubeconfig, namespace, "crash", "--rank", "1", "--attempt", "0")
    assert code == 0 and "the disk is on fire" in out
    code, _, err = _plugin_logs(kubeconfig, namespace, "crash", "--rank", "0", "--attempt", "5")
    assert code == 1 and "has not started yet" in err, err

    # Once attempt 1 runs, the kept pod goes, and the plugin says why its log is gone.
    harness.wait_phase("crash", "Running", attempt=1, timeout=180)

    wait_for(lambda: is_gone(lambda: core.read_namespaced_pod("crash-1-a0", namespace)), timeout=60, what="the kept pod deleted after the next attempt ran")
    code, _, err = _plugin_logs(kubeconfig, namespace, "crash", "--rank", "1", "--attempt", "0")
    assert code == 1 and "deleted after its successor, attempt 1, ran" in err and "the disk is on fire" in err, err
    harness.wait_phase("crash", "Succeeded", timeout=240)
    # Quiet logs: no c10d warning about a peer's hostname (the node's hosts file answers its lookups).
    for rank in (0, 1):
        log = core.read_namespaced_pod_log(f"crash-{rank}-a1", namespace)
        assert "joined: rank" in log and "[c10d]" not in log, log[-2000:]


def test_a_rank_that_never_joins_stalls_the_job(harness, operator, kubeconfig, namespace):
    config_map, manifest = _job_with_sitecustomize("stall", NEVER_JOIN, rendezvousTimeoutSeconds=5)
    manifest["spec"]["runPolicy"]["backoffLimit"] = 0
    kubectl_apply(kubeconfig, namespace, config_map, manifest)
    status = harness.wait_phase("stall", "Failed", timeout=180)
    stalled = harness.condition("stall", "Stalled")
    assert stalled and stalled["status"] == "True" and stalled["reason"] == "RendezvousTimeout", status
    assert "rank pods 0-1" in stalled["message"]
    assert status["lastFailure"]["reason"] == "RendezvousTimeout"
    assert harness.condition("stall", "Failed")["reason"] == "BackoffLimitExceeded"
    wait_for(lambda: any(reason == "Stalled" for _, reason, _ in harness.events("stall")), what="the Stalled Event")


def test_a_spot_reclaim_is_reported_as_the_eviction_it_is(harness, operator, kubeconfig, namespace, local_cluster):
    if local_cluster is None:
        pytest.skip("reclaims go through rectrain-local")
    kubectl_apply(kubeconfig, namespace, job_manifest("reclaimed", trainer(rows=400_000, batch=256)))
    harness.wait_phase("reclaimed", "Running", timeout=180)
    reclaim(local_cluster, namespace, "reclaimed-1-a0", grace_period=10)
    status = wait_for(lambda: (s := harness.status("reclaimed")).get("lastFailure") and s, timeout=60, what="the reclaim recorded")
    last = status["lastFailure"]
    assert (last["cause"], last["rank"], last["reason"]) == ("preemption", 1, "TerminationByCloudProvider"), last
    assert "evicted" in last["message"] and "capacity was reclaimed" in last["message"], last
    assert "someone other than the operator" not in last["message"]
    assert status["preemptions"] == 1 and (status.get("failures") or 0) == 0
    wait_for(lambda: any(r == "Preempted" and "capacity was reclaimed" in m for _, r, m in harness.events("reclaimed")),
             what="the Preempted Event naming the reclaim")
