"""Sharded embeddings on the local cluster: a job whose tables and Adagrad state would not fit this
machine as a replica per rank (26 tables x 2M rows x dim 32: 13.3 GB per replica, two replicas
more than the machine's memory) trains table-wise to Succeeded, each rank holding half of it."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from jobs_support import job_manifest, kubectl_apply

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TABLES, DIM = [2_000_000] * 26, 32
REPLICA_BYTES = sum(TABLES) * DIM * 4 * 2  # fp32 table + Adagrad's sum: 13.3 GB


def _meminfo(field: str) -> int:
    for line in open("/proc/meminfo"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def test_sharded_tables_train_where_replicas_would_not_fit(harness, operator, kubeconfig, namespace):
    assert 2 * REPLICA_BYTES > _meminfo("MemTotal"), "the premise: two replicas do not fit this machine"
    if _meminfo("MemAvailable") < REPLICA_BYTES + (2 << 30):
        pytest.skip(f"needs {REPLICA_BYTES / 2**30 + 2:.0f} GiB available for the two half shards")
    section = {
        "model": {"embeddingDim": DIM, "tableSizes": TABLES, "numDenseFeatures": 13, "bottomMlp": [32, 32],
                  "topMlp": [32], "sharding": "table"},
        "data": {"source": "synthetic", "synthetic": {"rows": 4096, "evalRows": 512, "seed": 7}},
        "training": {"epochs": 1, "maxSteps": 4, "batchSize": 256, "backend": "gloo", "device": "cpu", "seed": 3,
                     "dataLoaderWorkers": 0, "optimizer": {"sparse": "adagrad", "learningRate": 0.01}},
        "reporting": {"progressIntervalSeconds": 0.5, "metricsPort": 0, "logEverySteps": 2},
    }
    manifest = job_manifest("shard", section)
    manifest["spec"]["resources"] = {"cpu": "500m", "memory": "8Gi"}
    kubectl_apply(kubeconfig, namespace, manifest)
    status = harness.wait_phase("shard", "Succeeded", timeout=420)
    assert status["progress"]["step"] == 4

    for rank in (0, 1):
        log = subprocess.run(["kubectl", "-n", namespace, "logs", f"shard-{rank}-a0"], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "KUBECONFIG": kubeconfig}, check=True).stdout
        held = re.search(rf"embeddings rank {rank}: (\d+) rows, (\d+) param bytes, (\d+) optimizer state bytes", log)
        rss = re.search(rf"rank {rank} peak RSS (\d+) bytes", log)
        assert held and rss, log[-3000:]
        rows, embedding_bytes, peak = int(held.group(1)), int(held.group(2)) + int(held.group(3)), int(rss.group(1))
        assert rows == sum(TABLES) // 2 and embedding_bytes == REPLICA_BYTES // 2, held.group(0)
        # Half a replica plus the process (torch, data, MLPs): far below the replica a rank would need.
        assert REPLICA_BYTES // 2 < peak < REPLICA_BYTES // 2 + (3 << 29), f"rank {rank}: peak RSS {peak / 2**30:.2f} GiB"
