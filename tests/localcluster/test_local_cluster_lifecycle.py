"""What `rectrain-local` promises about its own processes and data: up/down/up, --fresh, reuse, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client, config
from rectrain_local.build import BINARIES, BuildCache
from rectrain_local.cluster import LocalCluster
from rectrain_local.node import network
from support import wait_for

CLI = [sys.executable, "-m", "rectrain_local.cli"]


def _core(cluster: LocalCluster) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))


def _config_map_exists(core: client.CoreV1Api, name: str) -> bool:
    try:
        core.read_namespaced_config_map(name, "default")
        return True
    except client.ApiException as exc:
        assert exc.status == 404
        return False


def _cli(state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "--state-dir", str(state_dir), *args], capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_restart_keeps_data_and_fresh_wipes_it(tmp_path):
    if os.environ.get("RECTRAIN_TEST_KUBECONFIG"):
        pytest.skip("exercises rectrain-local itself, not an external cluster")
    cluster = LocalCluster(tmp_path / "state")
    try:
        cluster.up(fresh=True)
        _core(cluster).create_namespaced_config_map("default", {"metadata": {"name": "survivor"}})
        first = {p.name: p.pid for p in cluster.load_state().processes}
        expected = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
        assert set(first) == (expected | {"node-agent"} if os.geteuid() == 0 else expected)

        # A second `up` reuses the running cluster instead of starting another.
        result = _cli(cluster.state_dir, "up")
        assert result.returncode == 0, result.stderr
        assert "already running" in result.stderr
        assert {p.name: p.pid for p in cluster.load_state().processes} == first

        records = cluster.load_state().processes
        result = _cli(cluster.state_dir, "down")
        assert result.returncode == 0, result.stderr
        assert not any(record.alive() for record in records), "down left a process running"
        assert _cli(cluster.state_dir, "status").returncode == 3

        cluster.up()
        assert _config_map_exists(_core(cluster), "survivor"), "data did not survive a restart"
        cluster.up(fresh=True)
        assert not _config_map_exists(_core(cluster), "survivor"), "--fresh did not wipe the data"

        status = json.loads(_cli(cluster.state_dir, "status").stdout)
        assert status["apiserverReady"] and all(p["alive"] for p in status["processes"])
        assert _cli(cluster.state_dir, "env").stdout.strip() == f"export KUBECONFIG={cluster.kubeconfig}"
    finally:
        records = cluster.load_state().processes
        cluster.down(quiet=True)
        assert not any(record.alive() for record in records)


@pytest.mark.slow
def test_a_failing_step_names_the_step_command_and_log(tmp_path):
    if os.environ.get("RECTRAIN_TEST_KUBECONFIG"):
        pytest.skip("exercises rectrain-local itself, not an external cluster")
    state = (tmp_path / "state").resolve()
    # The controller-manager cannot write its self-signed serving certificate into a "directory" that is
    # a file: the start-up must fail at that step, after etcd and kube-apiserver already run, and stop them.
    (state / "cluster" / "pki").mkdir(parents=True)
    (state / "cluster" / "pki" / "controller-manager-generated").write_text("not a directory")
    result = _cli(state, "up", "--timeout", "150")
    assert result.returncode == 1, result.stderr
    assert "starting etcd" in result.stderr and "starting kube-apiserver" in result.stderr, result.stderr
    assert "step failed: start kube-controller-manager" in result.stderr, result.stderr
    assert "command: " in result.stderr and "/kube-controller-manager --kubeconfig=" in result.stderr
    assert f"log: {state / 'cluster' / 'logs' / 'kube-controller-manager.log'}" in result.stderr
    # `down` forgets the records of what it stopped, so look for leftovers by command line: every
    # component's command names the state directory (etcd's --data-dir, the others' kubeconfig).
    assert not _processes_running(str(state)), "a process the failed up started still runs"


def test_half_built_cache_is_not_complete(tmp_path):
    cache = BuildCache(tmp_path / "k8s")
    (cache.bin_dir).mkdir(parents=True)
    for name in BINARIES:
        (cache.bin_dir / name).write_text("#!/bin/sh\n")
        (cache.bin_dir / name).chmod(0o755)
    assert not cache.is_complete(), "binaries without the completion marker must not count"
    cache.marker.write_text("{}")
    assert cache.is_complete()
    (cache.bin_dir / BINARIES[0]).unlink()
    assert not cache.is_complete(), "a marker with a binary missing must not count"


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _processes_running(marker: str) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and marker in _cmdline(p)]


def _start_sleeper(cluster: LocalCluster, name: str, marker: str):
    """A pod whose process sleeps with `marker` in its command line; returns (pod, its PIDs)."""
    core = _core(cluster)
    wait_for(lambda: core.read_namespaced_service_account("default", "default").secrets, what="the default token")
    core.create_namespaced_pod("default", {
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "main", "image": "x", "command": [sys.executable, "-c", f"import time; {marker}"]}]},
    })
    pod = wait_for(lambda: (lambda p: p if p.status.phase == "Running" else None)(core.read_namespaced_pod(name, "default")),
                   timeout=60, what=f"pod {name} to run")
    pids = wait_for(lambda: _processes_running(marker), what=f"pod {name}'s process to run its command")
    return pod, pids


needs_node_agent = pytest.mark.skipif(
    bool(os.environ.get("RECTRAIN_TEST_KUBECONFIG")) or os.geteuid() != 0, reason="exercises the local node agent (root)"
)


@pytest.mark.slow
@needs_node_agent
def test_down_ends_running_pods_and_their_network(tmp_path):
    cluster = LocalCluster(tmp_path / "state")
    marker = f"time.sleep(600)  # {tmp_path.name}"
    try:
        cluster.up(fresh=True)
        pod, pids = _start_sleeper(cluster, "long-runner", marker)
        netns = network.netns_name(pod.metadata.uid)
        assert netns in network.list_pod_netns()
    finally:
        records = cluster.load_state().processes
        cluster.down(quiet=True)
    assert not any(record.alive() for record in records)
    assert not _processes_running(marker), "a pod's process outlived down"
    assert netns not in network.list_pod_netns()


@pytest.mark.slow
@needs_node_agent
def test_restarted_node_agent_ends_what_it_left(tmp_path):
    """An agent killed hard leaves pod processes behind; the next one ends them and says so in the
    pod's status, instead of leaving a pod that claims to run with no process behind it."""
    cluster = LocalCluster(tmp_path / "state")
    marker = f"time.sleep(601)  # {tmp_path.name}"
    try:
        cluster.up(fresh=True)
        _, pids = _start_sleeper(cluster, "orphan", marker)
        agent = next(p for p in cluster.load_state().processes if p.name == "node-agent")
        os.kill(agent.pid, signal.SIGKILL)
        wait_for(lambda: not agent.alive(), what="the agent to die")
        assert _processes_running(marker) == pids, "the pod should outlive a killed agent"

        cluster.up()  # notices the dead agent and starts the node again
        core = _core(cluster)
        wait_for(lambda: core.read_namespaced_pod("orphan", "default").status.phase == "Failed", timeout=60,
                 what="the orphaned pod to be reported Failed")
        terminated = core.read_namespaced_pod("orphan", "default").status.container_statuses[0].state.terminated
        assert terminated.reason == "NodeAgentRestarted"
        assert not _processes_running(marker), "the old process still runs"
    finally:
        cluster.down(quiet=True)
