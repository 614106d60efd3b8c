"""The embedding tables and their optimizer state ask for transparent huge pages (hugepages.py):
what makes CPU lookups and sparse updates faster. Checked in /proc/self/smaps of a fresh process
(so no earlier test's freed memory is reused): the mapping that holds a tensor has anonymous huge
pages once the tensor is written, and a plain torch.empty beside it has none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rectrain_trainer.hugepages import advise_huge_pages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MODE = THP.read_text() if THP.exists() else "[never]"

CHILD = r"""
import json, sys
from pathlib import Path
import torch
from rectrain_trainer.fused_sparse import FusedSparseOptimizer
from rectrain_trainer.model import EmbeddingTables

def huge_bytes_at(address):
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1]) * 1024
    return 0

def middle(t):
    return huge_bytes_at(t.data_ptr() + t.nbytes // 2)

plain = torch.empty(1_100_000, 16).uniform_()  # first: before anything in this process asked for huge pages
tables = EmbeddingTables([600_000, 500_000], 16, seed=1)
state = FusedSparseOptimizer([tables.weight], "adagrad", lr=0.1).state[tables.weight]["sum"]
print(json.dumps({"plain": middle(plain), "table": middle(tables.weight), "state": middle(state)}))
"""


@pytest.mark.skipif("[never]" in MODE, reason="no transparent huge pages here")
def test_a_table_and_its_adagrad_state_sit_on_huge_pages_and_a_plain_tensor_does_not():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True).stdout
    huge = json.loads(out.strip().splitlines()[-1])
    assert huge["table"] >= 8 * 2**21 and huge["state"] >= 8 * 2**21, huge
    if "[madvise]" in MODE:  # the control: only memory that asks gets huge pages
        assert huge["plain"] == 0, huge


def test_small_and_non_cpu_tensors_are_left_alone():
    assert advise_huge_pages(torch.empty(1000)) is False
    assert advise_huge_pages(torch.empty(1 << 20, device="meta")) is False
