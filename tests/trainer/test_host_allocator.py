"""host_allocator.retain_freed_memory: a step's freed tensors stay in the process, so the next step
does not page them in again. Measured as minor page faults per DLRM forward and backward pass
(batch 2048, 26 small tables), each case in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rectrain_trainer.host_allocator import USER_ENV

CHILD = r"""
import json, resource, sys
import torch
from rectrain_api.trainer_config import ModelConfig
from rectrain_trainer.host_allocator import retain_freed_memory
from rectrain_trainer.model import DLRM

applied = retain_freed_memory() if sys.argv[1] == "retain" else None
torch.manual_seed(0)
model = DLRM(ModelConfig(tableSizes=[1000] * 26, embeddingDim=16, bottomMlp=[64, 16], topMlp=[64, 32]))

def step():
    dense, cat = torch.rand(2048, 13), torch.randint(0, 1000, (2048, 26))
    model(dense, cat).sum().backward()
    model.zero_grad(set_to_none=True)

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

for _ in range(3):
    step()
before = faults()
for _ in range(20):
    step()
print(json.dumps({"applied": applied, "faults_per_step": (faults() - before) / 20}))
"""


def _child(mode: str, **extra_env: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in USER_ENV} | extra_env
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120, check=True,
                         env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_step_reuses_the_memory_the_last_one_freed_instead_of_faulting_it_in_again():
    default, retained = _child("default"), _child("retain")
    assert retained["applied"] is True
    # glibc's defaults: 1,300-2,500 faults per step here; retained: under 40
    assert default["faults_per_step"] > 200, default
    assert retained["faults_per_step"] < default["faults_per_step"] / 4, (default, retained)


def test_the_users_own_glibc_malloc_settings_are_kept():
    assert _child("retain", MALLOC_TOP_PAD_="0")["applied"] is False
