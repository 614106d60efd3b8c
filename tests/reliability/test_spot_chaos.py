"""Spot chaos: during one real training job (2 ranks, checkpoints on a PersistentVolumeClaim) reclaim a
random rank three times through the local node's simulated spot reclaim:

1. during the first steps (the first progress report of attempt 0),
2. during a checkpoint write (the moment a `.tmp-step-*` directory appears), with no grace period,
   so the writer is SIGKILLed mid-write and leaves a torn checkpoint behind,
3. at a random later moment, with a grace period (the trainer checkpoints on SIGTERM).

Expect Succeeded, preemptions = 3, failures = 0 (backoffLimit untouched), the global step never
regressing more than one checkpoint interval, every resume from a complete checkpoint (never the torn
one), and a final AUC within 0.01 of an uninterrupted run with the same seed.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from jobs_support import ProgressRecorder, job_manifest, kubectl_apply, reclaim, trainer
from support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.slow]

EVERY = 25
ROWS = 400_000
BATCH = 512
CLAIM = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ckpt"},
         "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}


def attempt_pods(harness, job: str) -> tuple[int, list]:
    attempt = harness.status(job).get("attempt", 0)
    return attempt, harness.pods(job, attempt)


def test_three_spot_reclaims_during_training(harness, operator, kubeconfig, namespace, local_cluster, pods_can_run):
    if local_cluster is None:
        pytest.skip("reclaims go through rectrain-local")
    rng = random.Random()
    seed = rng.randrange(10**6)
    rng.seed(seed)

    # The uninterrupted reference run, same seed (same trainer section), no checkpoints needed.
    kubectl_apply(kubeconfig, namespace, job_manifest("calm", trainer(rows=ROWS, batch=BATCH)))
    calm = harness.wait_phase("calm", "Succeeded", timeout=300)

    manifest = job_manifest("spot", trainer(rows=ROWS, batch=BATCH, checkpoint_every=EVERY), claim="ckpt")
    manifest["spec"]["spot"] = {"enabled": True, "provider": "gke", "mode": "preferred"}
    backoff = manifest["spec"]["runPolicy"]["backoffLimit"]
    kubectl_apply(kubeconfig, namespace, CLAIM, manifest)
    recorder = ProgressRecorder(harness, "spot")
    recorder.start()
    reclaims: list[str] = []
    try:
        # 1. During the first steps: as soon as every rank runs.
        harness.wait_phase("spot", "Running", timeout=180)
        attempt, pods = attempt_pods(harness, "spot")
        victim = rng.choice(pods).metadata.name
        reclaim(local_cluster, namespace, victim, grace_period=20)
        reclaims.append(f"{victim} at step {(harness.status('spot').get('progress') or {}).get('step')} (first steps)")
        harness.wait_phase("spot", "Running", timeout=120, attempt=attempt + 1)

        # 2. During a checkpoint write: reclaim rank 0 (the writer) with no grace the moment a temporary
        # checkpoint exists. Signal delivery takes a moment, so the write may still finish; to make the
        # "never load a torn checkpoint" check deterministic, torn ones with a higher step are planted
        # too: a half-written temporary directory and a step directory without its completion marker.
        ckpt_dir = wait_for(lambda: next(local_cluster.state_dir.glob(f"**/persistent-volumes/{namespace}/*/run"), None),
                            timeout=120, what="the checkpoint directory")
        seen = wait_for(lambda: [p.name for p in ckpt_dir.glob(".tmp-step-*")], timeout=180, interval=0.002,
                        what="a checkpoint being written")
        attempt, pods = attempt_pods(harness, "spot")
        victim = next(p for p in pods if p.metadata.labels["rectrain.io/rank"] == "0").metadata.name
        for torn in (ckpt_dir / ".tmp-step-09999999", ckpt_dir / "step-09999998"):
            torn.mkdir()
            (torn / ".metadata").write_bytes(b"\x00torn")
        reclaim(local_cluster, namespace, victim, grace_period=0)
        reclaims.append(f"{victim} while writing {seen}")
        harness.wait_phase("spot", "Running", timeout=120, attempt=attempt + 1)

        # 3. At a random later moment, a random rank.
        at = rng.randint(EVERY, 4 * EVERY)
        step_now = harness.status("spot")["progress"]["step"]
        wait_for(lambda: harness.status("spot")["progress"]["step"] >= step_now + at, timeout=180, interval=0.05,
                 what=f"{at} more steps")
        attempt, pods = attempt_pods(harness, "spot")
        victim = rng.choice(pods).metadata.name
        reclaim(local_cluster, namespace, victim, grace_period=20)
        reclaims.append(f"{victim} at step {harness.status('spot')['progress']['step']} (random)")

        status = harness.wait_phase("spot", "Succeeded", timeout=400)
    finally:
        recorder.done.set()
        recorder.join(5)

    # Regression: the first step each new attempt reports vs the last step the previous one reported
    # (an attempt reclaimed before its first report has nothing to compare).
    regressions = []
    attempts = sorted({a for a, _ in recorder.samples})
    for prev, nxt in zip(attempts, attempts[1:]):
        last = max(s for a, s in recorder.samples if a == prev)
        first = min(s for a, s in recorder.samples if a == nxt)
        regressions.append(last - first)
    resumed = resumes(local_cluster.state_dir, namespace)
    auc, calm_auc = status["metrics"]["auc"], calm["metrics"]["auc"]
    print(f"spot chaos (seed {seed}): reclaims={reclaims} regressions={regressions} resumed={resumed} "
          f"auc={auc:.4f} uninterrupted={calm_auc:.4f} final={status['progress']}")

    assert status["preemptions"] == 3, status
    assert (status.get("failures") or 0) == 0 and status["restarts"] == 3, status
    assert harness.job("spot")["spec"]["runPolicy"]["backoffLimit"] == backoff
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == calm["progress"]["totalSteps"]
    assert len(regressions) >= 2 and max(regressions) <= EVERY, (regressions, recorder.samples)
    assert resumed, "no attempt resumed from a checkpoint"
    for path in resumed:
        assert re.search(r"/step-\d+$", path) and ".tmp" not in path and "0999999" not in path, f"resumed from {path}"
    assert abs(auc - calm_auc) <= 0.01, (auc, calm_auc)


def resumes(state_dir: Path, namespace: str) -> list[str]:
    """The checkpoint paths the trainers said they resumed from (the node agent keeps every pod's log)."""
    out = []
    for log in sorted(state_dir.glob(f"**/{namespace}_spot-*/container.log")):
        out += re.findall(r"resumed from (\S+) \(step", log.read_text(errors="replace"))
    return out
