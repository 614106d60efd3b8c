"""The rendezvous watchdog: a Running attempt whose ranks all run but never report a training step
within runPolicy.rendezvousTimeoutSeconds is Stalled, and fails (RendezvousTimeout)."""

from __future__ import annotations

from rectrain_api import job as api
from rectrain_api.timestamps import parse_time

from rectrain_operator.conditions import condition, set_condition
from rectrain_operator.failure_classification import Failure
from rectrain_operator.job_observation import Gang, Observation
from rectrain_operator.job_status import JobStatusDraft
from rectrain_operator.requeue_delays import REQUEUE_SLACK_SECONDS

DEFAULT_RENDEZVOUS_TIMEOUT_SECONDS = 600
STALLED = "Stalled"


def rendezvous_timeout(spec: api.RecTrainJobSpec) -> int:
    """runPolicy.rendezvousTimeoutSeconds; when empty, the default for the built-in trainer and off for a
    custom command (it need not report progress). 0: no watchdog."""
    timeout = spec.runPolicy.rendezvousTimeoutSeconds
    if timeout is None:
        return 0 if spec.custom_command else DEFAULT_RENDEZVOUS_TIMEOUT_SECONDS
    return timeout


def watch_rendezvous(obs: Observation, status: JobStatusDraft, spec: api.RecTrainJobSpec, gang: Gang) -> Failure | float | None:
    """The rendezvous watchdog of a Running attempt: a Failure (RendezvousTimeout) when no training step
    was reported within the timeout after every rank ran; else the seconds until it could be, or None.

    What "reported" means: status.progress written during this attempt (updatedTime not before the last
    rank's container started). Rank 0 alone writes it, from its training loop, which it enters only once
    every rank joined the process group (the rendezvous waits for all), so one report proves every rank
    joined; none cannot say which rank is missing: every rank pod runs, and the operator reads no logs
    (each rank that joined logs 'joined: rank r of W'). Clears Stalled once an attempt reports."""
    timeout = rendezvous_timeout(spec)
    running = condition(status.conditions, "Running")
    if status.phase != "Running" or not gang.all_up or running is None or running.status != "True":
        return None
    # Two clocks: the report's time is compared with the ranks' start (both the nodes' clocks), the
    # timeout counts from the moment the operator saw all ranks run (its own clock, like obs.now).
    ran_since = parse_time(running.lastTransitionTime) or obs.now
    started = max((p.started_at for p in gang.current if p.started_at is not None), default=ran_since)
    progress = obs.status.get("progress") if isinstance(obs.status.get("progress"), dict) else {}
    reported_at = parse_time(progress.get("updatedTime"))
    if reported_at is not None and reported_at >= started:
        stalled = condition(status.conditions, STALLED)
        if stalled is not None and stalled.status == "True":
            status.conditions = set_condition(status.conditions, STALLED, False, "Progressing",
                                              f"attempt {status.attempt} reported training steps", obs.now)
        return None
    if timeout <= 0:
        return None
    waited = (obs.now - ran_since).total_seconds()
    if waited < timeout:
        return timeout - waited + REQUEUE_SLACK_SECONDS
    pods = gang.replicas
    ranks = f"rank pods 0-{pods - 1}" if pods > 1 else "rank pod 0"
    message = (f"rendezvous stalled: no training step reported {timeout}s after all {pods} rank pods ran "
               f"(attempt {status.attempt}); not confirmed to have joined: {ranks} (world size {pods * spec.procs}; "
               f"rank 0 reports only after a step every rank takes part in; a rank that joined logs "
               f"'joined: rank r of W')")
    status.conditions = set_condition(status.conditions, STALLED, True, "RendezvousTimeout", message, obs.now)
    return Failure("failure", 0, "RendezvousTimeout", None, message)
