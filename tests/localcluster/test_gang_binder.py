"""The local node's gang binder, pure parts: which pod groups it places, given the node's room."""

from __future__ import annotations

from decimal import Decimal

from rectrain_local.node import gang

NODE = "node-1"
ALLOCATABLE = {"cpu": Decimal(2), "memory": Decimal(8 * 2**30), "pods": Decimal(110)}


def pod(name, group=None, kind="coscheduling", node=None, cpu="600m", created="2026-01-01T00:00:00Z", count=None,
        scheduler=gang.DEFAULT_SCHEDULER_NAME, phase="Pending"):
    labels, annotations = {}, {}
    if group and kind == "coscheduling":
        labels[gang.COSCHEDULING_LABEL] = group
    elif group:
        labels[gang.KUEUE_GROUP_LABEL] = group
        annotations[gang.KUEUE_COUNT_ANNOTATION] = str(count)
    return gang.PodInfo.of({
        "metadata": {"uid": name, "name": name, "namespace": "ns", "labels": labels, "annotations": annotations,
                     "creationTimestamp": created},
        "spec": {"schedulerName": scheduler, "nodeName": node,
                 "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}, "limits": {"memory": "1Gi"}}}]},
        "status": {"phase": phase},
    })


def test_requests_and_room():
    p = pod("a")
    assert p.requests["cpu"] == Decimal("0.6") and p.requests["memory"] == Decimal(2**30), "a limit stands in for a request"
    room = gang.free_room(ALLOCATABLE, [pod("on", node=NODE), pod("done", node=NODE, phase="Succeeded"), pod("other", node="x")], NODE)
    assert room["cpu"] == Decimal("1.4") and room["pods"] == 109


def test_a_gang_is_placed_whole_or_not_at_all():
    # One place left for 600m pods: a 2-pod gang waits, a lone pod behind it is placed (backfill).
    pods = [pod("run-0", node=NODE), pod("run-1", node=NODE),
            pod("g-0", "g", created="2026-01-01T00:00:01Z"), pod("g-1", "g", created="2026-01-01T00:00:01Z"),
            pod("solo", created="2026-01-01T00:00:02Z")]
    room = gang.free_room(ALLOCATABLE, pods, NODE)
    order = gang.groups(pods, gang.DEFAULT_SCHEDULER_NAME)
    assert [[p.name for p in g.waiting] for g in order] == [["g-0", "g-1"], ["solo"]]
    assert not gang.placeable(order[0], 2, room)
    assert gang.placeable(order[1], 1, room)


def test_min_member_counts_what_exists_and_what_is_bound():
    g, = gang.groups([pod("g-0", "g")], gang.DEFAULT_SCHEDULER_NAME)
    room = dict(ALLOCATABLE)
    assert not gang.placeable(g, 2, room), "the second member does not exist yet"
    assert not gang.placeable(g, None, room), "no PodGroup yet: wait"
    g, = gang.groups([pod("g-0", "g"), pod("g-1", "g", node=NODE)], gang.DEFAULT_SCHEDULER_NAME)
    assert g.bound == 1 and gang.placeable(g, 2, room), "a member already bound counts"


def test_kueue_groups_and_other_schedulers():
    pods = [pod("k-0", "k", kind="kueue", count=2), pod("k-1", "k", kind="kueue", count=2),
            pod("default", scheduler="default-scheduler")]
    (g,) = gang.groups(pods, gang.DEFAULT_SCHEDULER_NAME)
    assert g.key == ("kueue", "k") and [p.total_count for p in g.waiting] == [2, 2]


def test_quantity():
    assert gang.quantity("1500m") == Decimal("1.5") and gang.quantity("2Gi") == 2 * 2**30 and gang.quantity("3") == 3
    assert gang.quantity("junk") == 0
