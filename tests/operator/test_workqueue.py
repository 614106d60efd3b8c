"""The reconcile work queue: dedupe, delays, one worker per key."""

from __future__ import annotations

import threading
import time

from rectrain_operator.reconciler import WorkQueue


def test_dedupe_and_delay():
    q = WorkQueue()
    q.add(("ns", "b"), delay=0.2)
    q.add(("ns", "a"))
    q.add(("ns", "a"))
    q.add(("ns", "b"), delay=5)  # a later due time never postpones an earlier one
    assert q.get() == ("ns", "a")
    q.done(("ns", "a"))
    t0 = time.monotonic()
    assert q.get() == ("ns", "b")
    assert 0.15 < time.monotonic() - t0 < 2
    q.done(("ns", "b"))
    q.close()
    assert q.get() is None


def test_busy_key_waits_for_done():
    q = WorkQueue()
    q.add(("ns", "a"))
    assert q.get() == ("ns", "a")
    q.add(("ns", "a"))  # re-added while being processed
    got = []
    t = threading.Thread(target=lambda: got.append(q.get()))
    t.start()
    time.sleep(0.2)
    assert got == []  # not handed to a second worker
    q.done(("ns", "a"))
    t.join(2)
    assert got == [("ns", "a")]
    q.close()
