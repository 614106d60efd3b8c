"""status.reason/message (the -o wide REASON and MESSAGE columns) come from the condition that explains
the job now."""

from __future__ import annotations

from rectrain_api.job import Condition
from rectrain_operator.conditions import headline


def cond(type_: str, status: str, reason: str, at: str) -> Condition:
    return Condition(type=type_, status=status, reason=reason, message=f"{reason} message", lastTransitionTime=at)


T1, T2 = "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z"


def test_the_newest_true_condition_explains_the_job():
    assert headline([], "Pending") == (None, None)
    conditions = [cond("Created", "True", "PodsCreated", T1), cond("Running", "False", "InvalidSpec", T2),
                  cond("Failed", "True", "InvalidSpec", T2)]
    assert headline(conditions, "Failed") == ("InvalidSpec", "InvalidSpec message")
    # A false condition never explains the job, however new.
    assert headline(conditions[:2], "Pending") == ("PodsCreated", "PodsCreated message")


def test_in_the_same_second_the_phase_names_the_condition():
    conditions = [cond("Restarting", "True", "Resizing", T2), cond("Resized", "True", "Shrunk", T2)]
    assert headline(conditions, "Restarting")[0] == "Resizing"
    assert headline(conditions, "Running")[0] == "Shrunk"  # otherwise the later one in the list
    assert headline([cond("Running", "True", "AllRanksRunning", T2), cond("Created", "True", "PodsCreated", T1)],
                    "Running")[0] == "AllRanksRunning"


def test_a_gang_the_scheduler_cannot_place_says_why_until_it_is_placed():
    from lifecycle_support import cond as condition_of
    from lifecycle_support import obs, pod, step
    from rectrain_operator.elastic import Placement

    no_room = Placement(unschedulable=True, message="0/1 nodes are available: 1 Insufficient cpu.")
    _, status = step(obs())  # created: attempt 0, Pending
    waiting = [pod(0, phase="Pending", placement=Placement(placed=True)), pod(1, phase="Pending", placement=no_room)]
    _, status = step(obs(status, waiting))
    assert (status["reason"], status["message"]) == ("Unschedulable", "1 of 2 rank pods cannot be placed: "
                                                     "0/1 nodes are available: 1 Insufficient cpu.")
    _, status = step(obs(status, [pod(0), pod(1)]))
    assert condition_of(status, "Unschedulable")["status"] == "False"
    assert (status["phase"], status["reason"]) == ("Running", "AllRanksRunning")
