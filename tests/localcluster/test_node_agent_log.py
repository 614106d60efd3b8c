"""The node agent's log is JSON lines: one object a record, whatever the message holds."""

from __future__ import annotations

import io
import json
import logging
import os
import sys

import pytest
from kubernetes import client
from rectrain_local.node.jsonlog import JsonFormatter
from support import wait_for


def _record_lines(text: str) -> list[dict]:
    """Each complete line of a log as JSON (a line still being written is left out): every line must be
    a JSON object, blank lines and rectrain-local's plain-text spawn headers included."""
    complete = text[: text.rfind("\n") + 1]
    records = []
    for number, line in enumerate(complete.splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        assert isinstance(record, dict), f"line {number} is not a JSON object: {line!r}"
        records.append(record)
    return records


def _log_through_formatter(emit) -> list[dict]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("rectrain.node.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return _record_lines(stream.getvalue())


def test_formatter_writes_one_json_object_a_record():
    def emit(logger: logging.Logger) -> None:
        logger.warning("quotes ' \" and\na newline, %s", "ünïcode")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("pod %s/%s failed", "ns", "p")

    warning, error = _log_through_formatter(emit)
    assert warning["level"] == "WARNING" and warning["logger"] == "rectrain.node.test-json"
    assert warning["message"] == "quotes ' \" and\na newline, ünïcode"
    assert warning["time"].endswith("Z") and "exception" not in warning
    assert error["message"] == "pod ns/p failed"
    assert "Traceback" in error["exception"] and "ValueError: boom" in error["exception"]


@pytest.mark.cluster
def test_agent_log_lines_parse_as_json(k8s_api, namespace, local_cluster):
    if local_cluster is None or os.geteuid() != 0:
        pytest.skip("reads the log of this session's local node agent (root)")
    core = client.CoreV1Api(k8s_api)
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "logged"},
        "spec": {"restartPolicy": "Never", "nodeSelector": {"rectrain.io/local-node": "true"},
                 "containers": [{"name": "main", "image": "rectrain/test:local", "command": [sys.executable, "-c", "pass"]}]},
    }
    core.create_namespaced_pod(namespace, pod)
    wait_for(lambda: core.read_namespaced_pod("logged", namespace).status.phase == "Succeeded", timeout=60, what="pod logged to succeed")

    records = _record_lines((local_cluster.log_dir / "node-agent.log").read_text())
    assert all({"time", "level", "logger", "message"} <= set(record) for record in records)
    assert any(record["message"].startswith(f"starting pod {namespace}/logged ") for record in records), records[-5:]
    # Each container's end is in the log too: what tells "the process never exited" from "its
    # status never reached the API server" when a pod stays Running.
    assert any(record["message"] == f"pod {namespace}/logged: container exited with code 0" for record in records), records[-5:]
