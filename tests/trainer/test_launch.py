"""`rectrain-launch`: several rank processes in one pod under the real torchrun, with the pod's
contract on top: SIGTERM reaches every local rank and the pod exits 143 after they checkpoint; a
crashing local rank ends the pod with its own exit code, named by global rank; every line of
output carries its global rank."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from support import wait_for
from trainer_helpers import free_port, tiny_config, trainer_env

from rectrain_api.exit_codes import PREEMPTED
from rectrain_trainer.checkpoint import latest_checkpoint
from rectrain_trainer.launch import exit_code

pytestmark = pytest.mark.slow


def pod_env(cfg: dict, procs: int, node_rank: int = 0, nnodes: int = 1, **extra) -> dict:
    """What the operator gives a pod holding `procs` ranks (see builders.build_env)."""
    return trainer_env(cfg, PET_NNODES=nnodes, PET_NPROC_PER_NODE=procs, PET_NODE_RANK=node_rank,
                       PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=free_port(), **extra)


def launch(command: list[str], env: dict, cwd=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rectrain_trainer.launch", *command], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_signal_deaths_become_shell_exit_codes():
    assert [exit_code(0), exit_code(7), exit_code(-9), exit_code(-15)] == [0, 7, 137, 143]


def test_a_crashing_local_rank_ends_the_pod_with_its_own_code(tmp_path: Path):
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        rank = int(os.environ["RANK"])
        print(f"hello from rank {rank} of {os.environ['WORLD_SIZE']}", flush=True)
        if rank == 1:
            sys.exit(7)
        time.sleep(60)  # the healthy rank is stopped by the launcher, not by finishing
    """))
    proc = launch([sys.executable, str(script)], pod_env({}, procs=2))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 7, out
    assert "rectrain-launch: global rank 1 (local rank 1) exited with code 7" in out.strip().splitlines()[-1], out
    assert "[rank0]:hello from rank 0 of 2" in out and "[rank1]:hello from rank 1 of 2" in out, out


def test_sigterm_reaches_every_local_rank_which_checkpoint_and_exit_143(tmp_path: Path):
    cfg = tiny_config(data={"synthetic": {"rows": 2_000_000, "evalRows": 500, "seed": 3}},
                      checkpoint={"directory": str(tmp_path / "ckpt"), "everySteps": 100_000})
    trainer = str(Path(sys.executable).parent / "rectrain-train")
    proc = launch([trainer, "--progress", "off"], pod_env(cfg, procs=2))
    output = OutputReader(proc)
    try:
        wait_for(lambda: proc.poll() is not None or "step=" in output.text(), timeout=180, what="the ranks to train")
        assert proc.poll() is None, f"launcher exited with {proc.returncode}:\n{output.text()[-3000:]}"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output.join(10)
    out = output.text()
    assert proc.returncode == PREEMPTED, out[-3000:]
    for rank in (0, 1):
        assert f"[rank{rank}]:" in out and f"rank={rank} rectrain.train: stopped by SIGTERM" in out, out[-3000:]
    assert latest_checkpoint(str(tmp_path / "ckpt")) is not None, f"no complete checkpoint after SIGTERM:\n{out[-3000:]}"
    assert "FutureWarning" not in out and "UserWarning" not in out, f"a Python warning in the ranks' logs:\n{out[-3000:]}"


class OutputReader(threading.Thread):
    """Collects a process's output as it comes, so the test can poll it."""

    def __init__(self, proc: subprocess.Popen) -> None:
        super().__init__(daemon=True)
        self.proc, self.lines = proc, []
        self.start()

    def run(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)
