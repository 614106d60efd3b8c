"""Operator chaos: SIGKILL the operator three times during one job's life (while it creates the gang,
while the gang restarts, at completion) and start it again each time. A pod watcher checks throughout
that there is never a duplicate rank, never pods of two attempts alive at once, never more pods than
replicas; at the end every pod is owned by the job and the status and counters are right.

Pods are harness-driven (no scheduler runs them; the test plays the kubelet), so the moments of the
kills are exact rather than lucky."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from kubernetes import client, watch
from rectrain_api import job as api
from support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

REPLICAS = 6


class PodWatcher(threading.Thread):
    """Watches the job's pods and records every moment an invariant breaks."""

    def __init__(self, api_client, namespace: str, job: str) -> None:
        super().__init__(daemon=True)
        self.core = client.CoreV1Api(api_client)
        self.ns, self.job = namespace, job
        self.live: dict[str, tuple[int, int]] = {}  # pod name -> (attempt, rank), not deleted and not finished
        self.violations: list[str] = []
        self.events = 0
        self.max_live = 0
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        sel = f"{api.LABEL_JOB_NAME}={self.job}"
        rv = self.core.list_namespaced_pod(self.ns, label_selector=sel).metadata.resource_version
        self.ready.set()
        while not self.stop.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(self.core.list_namespaced_pod, self.ns, label_selector=sel, resource_version=rv, timeout_seconds=2):
                    pod = ev["object"]
                    rv = pod.metadata.resource_version
                    self.observe(ev["type"], pod)
                    if self.stop.is_set():
                        break
            except client.ApiException as exc:
                if exc.status == 410:  # too old: relist
                    rv = self.core.list_namespaced_pod(self.ns, label_selector=sel).metadata.resource_version
                else:
                    raise
            finally:
                w.stop()

    def observe(self, kind: str, pod) -> None:
        self.events += 1
        name = pod.metadata.name
        alive = kind != "DELETED" and pod.metadata.deletion_timestamp is None and pod.status.phase not in ("Succeeded", "Failed")
        if alive:
            self.live[name] = (int(pod.metadata.labels[api.LABEL_ATTEMPT]), int(pod.metadata.labels[api.LABEL_RANK]))
        else:
            self.live.pop(name, None)
        attempts = {a for a, _ in self.live.values()}
        ranks = [r for _, r in self.live.values()]
        self.max_live = max(self.max_live, len(self.live))
        if len(attempts) > 1:
            self.violations.append(f"pods of attempts {sorted(attempts)} alive at once: {sorted(self.live)}")
        if len(ranks) != len(set(ranks)):
            self.violations.append(f"duplicate rank: {sorted(self.live)}")
        if len(self.live) > REPLICAS:
            self.violations.append(f"{len(self.live)} pods alive for {REPLICAS} replicas: {sorted(self.live)}")
        owners = pod.metadata.owner_references or []
        if not any(o.kind == api.KIND and o.name == self.job and o.controller for o in owners):
            self.violations.append(f"{name} is not owned by the job: {owners}")


def test_sigkill_the_operator_three_times_during_a_job(harness, operator, k8s_api, namespace):
    watcher = PodWatcher(k8s_api, namespace, "chaos")
    watcher.start()
    watcher.ready.wait(10)
    kills: list[str] = []
    recover: list[float] = []

    def kill_and_restart(moment: str) -> None:
        pid = operator.proc.pid
        operator.kill(signal.SIGKILL)
        assert operator.proc.returncode == -signal.SIGKILL, operator.proc.returncode
        kills.append(f"{moment} (pid {pid})")
        started = time.monotonic()
        operator.start()
        recover.append(time.monotonic() - started)

    try:
        # 1. While creating the gang: kill as soon as the first pod exists.
        # A 2 s restart back-off: the Restarting phase lasts long enough to kill the operator in it, and
        # the new operator must honour the restartAfter its predecessor wrote.
        harness.create_job("chaos", replicas=REPLICAS, runPolicy={"backoffLimit": 3, "restartBackoff": {"initialSeconds": 2}})
        wait_for(lambda: harness.pods("chaos"), interval=0.01, what="the first pod")
        kill_and_restart(f"creating the gang ({len(harness.pods('chaos'))}/{REPLICAS} pods existed)")
        t0 = time.monotonic()
        harness.wait_pods("chaos", REPLICAS, attempt=0)
        recover[-1] += time.monotonic() - t0
        harness.run_all("chaos", 0)
        harness.wait_phase("chaos", "Running")

        # 2. While restarting it: kill the moment the status says Restarting (pods not yet replaced).
        harness.exit("chaos-2-a0", 1)
        harness.wait_phase("chaos", "Restarting")
        kill_and_restart(f"restarting the gang ({len(harness.pods('chaos', 0))} attempt-0 pods left)")
        t0 = time.monotonic()
        harness.wait_pods("chaos", REPLICAS, attempt=1, timeout=60)
        # Attempt 0 goes, but for the crashed rank's pod: kept (stopped) for its log until attempt 1 runs.
        wait_for(lambda: [p.metadata.name for p in harness.pods("chaos", 0)] == ["chaos-2-a0"],
                 what="attempt 0 gone but for the crashed rank's pod")
        recover[-1] += time.monotonic() - t0
        harness.run_all("chaos", 1)
        harness.wait_phase("chaos", "Running", attempt=1)
        wait_for(lambda: not harness.pods("chaos", 0), what="the kept pod deleted once attempt 1 runs")

        # 3. At completion: every rank exits 0, then the operator dies before (or while) it notices.
        for p in harness.pods("chaos", 1):
            harness.exit(p.metadata.name, 0)
        kill_and_restart(f"completion (phase then {harness.status('chaos').get('phase')})")
        t0 = time.monotonic()
        status = harness.wait_phase("chaos", "Succeeded")
        recover[-1] += time.monotonic() - t0
        pods_at_end = sorted(p.metadata.name for p in harness.pods("chaos"))
    finally:
        watcher.stop.set()
        watcher.join(10)

    print(f"operator chaos: kills={kills} recover_s={[round(r, 2) for r in recover]} watcher_events={watcher.events} max_live={watcher.max_live}")
    assert watcher.violations == [], watcher.violations
    assert watcher.events >= 3 * REPLICAS, "the watcher saw too little to vouch for anything"
    assert len(kills) == 3
    assert watcher.max_live == REPLICAS
    assert (status["attempt"], status["restarts"], status["failures"], status.get("preemptions") or 0) == (1, 1, 1, 0), status
    assert status["lastFailure"]["rank"] == 2 and status["lastFailure"]["cause"] == "failure", status["lastFailure"]
    assert pods_at_end == [f"chaos-{r}-a1" for r in range(REPLICAS)], pods_at_end
    succeeded = harness.condition("chaos", "Succeeded")
    assert succeeded and succeeded["status"] == "True"
    assert operator.proc.poll() is None
