"""What the training loop carries from one step to the next: where it is in the data, what it last
measured, and the log window it is filling. Plain data; train.py does the work."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


class LossWindow:
    """The training loss and samples since the last log point.

    This rank's loss sum stays on the training device (one in-place add per step: no sync, no
    allocation) until the window closes; the global sample count is the same on every rank (each
    step adds its global batch size), so only the loss is all-reduced.
    """

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros(1, dtype=torch.float64, device=device)
        self.samples = 0
        self.started = time.perf_counter()

    def add(self, loss_sum: torch.Tensor, global_samples: int) -> None:
        self.loss_sum += loss_sum.detach()
        self.samples += global_samples

    def restart(self) -> None:
        self.loss_sum.zero_()
        self.samples = 0
        self.started = time.perf_counter()

    def close(self, distributed: bool) -> tuple[float | None, float | None]:
        """(mean loss over all ranks or None for an empty window, global samples per second or
        None), and the next window starts."""
        if distributed:
            dist.all_reduce(self.loss_sum)
        loss = float(self.loss_sum) / self.samples if self.samples else None
        self.loss_sum.zero_()
        elapsed = time.perf_counter() - self.started  # after the sync above: the steps are done
        samples_per_second = self.samples / elapsed if elapsed > 0 else None
        self.samples = 0
        self.started = time.perf_counter()
        return loss, samples_per_second


@dataclass
class LoopState:
    window: LossWindow
    # Position: what a checkpoint records and a resume restores.
    step: int = 0  # global optimizer steps done
    epoch: int = 0
    epoch_step: int = 0  # batches of `epoch` done
    last_checkpoint_step: int | None = None
    resumed_from_step: int | None = None  # the checkpoint this run started from, and who wrote it
    checkpoint_job_uid: str | None = None
    # Training measurements, as of the last log point.
    loss: float | None = None  # mean over all ranks' samples of the window
    samples_per_second: float | None = None  # global
    step_seconds: float | None = None  # moving average of one step's time (for the ETA)
    history: list[tuple[int, float | None]] = field(default_factory=list)  # (step, loss) at each log point
    # Evaluation, as of the last one.
    auc: float | None = None
    logloss: float | None = None
    eval_step: int | None = None
    # The current epoch's data-loader wait already counted in the metrics.
    data_wait_counted: float = 0.0

    def time_step(self, seconds: float) -> None:
        self.step_seconds = seconds if self.step_seconds is None else 0.9 * self.step_seconds + 0.1 * seconds
