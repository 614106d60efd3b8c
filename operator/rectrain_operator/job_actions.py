"""What the lifecycle decides: the actions for the reconciler to take (create / delete children,
post events) and the Decision that carries them with the next status and when to look again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rectrain_api import job as api


@dataclass(frozen=True)
class EnsureChildren:
    """Create the headless Service and the trainer ServiceAccount/Role/RoleBinding if missing."""


@dataclass(frozen=True)
class CreatePods:
    attempt: int
    ranks: tuple[int, ...]
    size: int  # rank pods in this attempt (the world size is size x procs)


@dataclass(frozen=True)
class CreateProbes:
    """Create these capacity probes of an elastic job (builders.build_probe)."""

    indices: tuple[int, ...]


@dataclass(frozen=True)
class DeletePods:
    names: tuple[str, ...]
    force: bool = False  # grace period 0: for pods stuck terminating (their node is gone)


@dataclass(frozen=True)
class DeleteChildren:
    """Delete every child (pods, Service, RBAC): ttlSecondsAfterFinished."""


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = EnsureChildren | CreatePods | CreateProbes | DeletePods | DeleteChildren | Event


@dataclass
class Decision:
    # Operator-owned status fields to write, as a JSON merge patch (None: unchanged). The phase
    # handlers leave it None; decide() fills it in from the status they changed.
    status: dict[str, Any] | None = None
    actions: list[Action] = field(default_factory=list)
    requeue_after: float | None = None
    spec: api.RecTrainJobSpec | None = None
    # For metrics: what happened in this step.
    created: bool = False
    finished: str | None = None  # "succeeded" | "failed"
    restart_cause: str | None = None  # "preemption" | "failure"
    time_to_running: float | None = None
