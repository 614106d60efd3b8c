"""Every pod the operator creates passes the Kubernetes "restricted" Pod Security Standard, checked
field by field (Kubernetes 1.20 has no PodSecurity admission to do it): the rank pods of a spread of
job shapes, as the real API server stored them, and the operator's own pod from the Helm chart.

The checks follow https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline +
restricted, latest): host namespaces, privileged, capabilities, hostPath and volume types, host ports,
AppArmor, SELinux, /proc mount, seccomp, sysctls, privilege escalation, non-root user."""

from __future__ import annotations

import copy

import pytest
from jobs_support import render_chart

pytestmark = [pytest.mark.cluster]

RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t"}


def restricted_violations(pod: dict) -> list[str]:
    """The "restricted" policy's checks; `pod` as the API returns it (camelCase). Empty when it passes."""
    bad: list[str] = []
    meta, spec = pod.get("metadata") or {}, pod["spec"]
    psc = spec.get("securityContext") or {}
    containers = [*(spec.get("initContainers") or []), *spec["containers"], *(spec.get("ephemeralContainers") or [])]

    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            bad.append(f"spec.{field} is true")
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            bad.append(f"volume {v['name']} has type {sorted(kinds - RESTRICTED_VOLUME_TYPES)}")
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            bad.append(f"AppArmor annotation {key}={value}")
    for sysctl in psc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            bad.append(f"unsafe sysctl {sysctl['name']}")

    def selinux(where: str, sc: dict) -> None:
        opts = sc.get("seLinuxOptions") or {}
        if opts.get("type") not in SELINUX_TYPES or opts.get("user") or opts.get("role"):
            bad.append(f"{where}.seLinuxOptions {opts}")

    selinux("spec.securityContext", psc)
    if psc.get("runAsNonRoot") is False:
        bad.append("spec.securityContext.runAsNonRoot is false")
    if psc.get("runAsUser") == 0:
        bad.append("spec.securityContext.runAsUser is 0")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        bad.append(f"spec.securityContext.seccompProfile.type is {pod_seccomp}")

    for c in containers:
        where = f"container {c['name']}"
        sc = c.get("securityContext") or {}
        selinux(where, sc)
        if sc.get("privileged"):
            bad.append(f"{where}: privileged")
        if sc.get("procMount") not in (None, "Default"):
            bad.append(f"{where}: procMount {sc['procMount']}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                bad.append(f"{where}: hostPort {port['hostPort']}")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{where}: allowPrivilegeEscalation is not false")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            bad.append(f"{where}: runAsNonRoot is not true (pod or container)")
        if sc.get("runAsUser") == 0:
            bad.append(f"{where}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{where}: seccompProfile is {seccomp} (pod or container must set RuntimeDefault/Localhost)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{where}: capabilities.drop lacks ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(f"{where}: capabilities.add {caps['add']}")
    return bad


def test_the_checker_catches_each_violation():
    good = {"metadata": {}, "spec": {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": "d", "emptyDir": {}}],
        "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}}
    assert restricted_violations(good) == []
    mutations = [
        lambda p: p["spec"].update(hostNetwork=True),
        lambda p: p["spec"].update(hostPID=True),
        lambda p: p["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        lambda p: p["spec"]["securityContext"].update(runAsUser=0),
        lambda p: p["spec"]["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        lambda p: p["spec"]["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
        lambda p: p["spec"]["securityContext"].pop("runAsNonRoot"),
        lambda p: p["spec"]["containers"][0]["securityContext"].update(privileged=True),
        lambda p: p["spec"]["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
        lambda p: p["spec"]["containers"][0]["securityContext"].update(capabilities={"add": ["SYS_ADMIN"], "drop": ["ALL"]}),
        lambda p: p["spec"]["containers"][0]["securityContext"].update(capabilities={}),
        lambda p: p["spec"]["containers"][0]["securityContext"].update(procMount="Unmasked"),
        lambda p: p["spec"]["containers"][0].update(ports=[{"containerPort": 1, "hostPort": 80}]),
        lambda p: p["metadata"].update(annotations={"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}),
    ]
    for i, mutate in enumerate(mutations):
        pod = copy.deepcopy(good)
        mutate(pod)
        assert restricted_violations(pod), f"mutation {i} not caught"


SHAPES = {
    "cpu": {"replicas": 2},
    "gpu-spot": {"replicas": 2, "gpusPerReplica": 2, "spot": {"enabled": True, "provider": "gke"},
                 "trainer": {"training": {"device": "cuda", "backend": "nccl", "precision": "fp16"}}},
    "multi-proc": {"replicas": 1, "procsPerReplica": 3, "resources": {"cpu": "3", "memory": "2Gi", "shmSize": "1Gi"}},
    "kueue-pvc": {"replicas": 2, "scheduling": {"queueName": "team-a"}, "nccl": {"debug": "INFO"},
                  "pod": {"volumes": [{"name": "ckpt", "persistentVolumeClaim": {"claimName": "ckpt"}},
                                      {"name": "cfg", "configMap": {"name": "cfg"}}],
                          "volumeMounts": [{"name": "ckpt", "mountPath": "/checkpoints"}, {"name": "cfg", "mountPath": "/cfg"}],
                          "env": [{"name": "EXTRA", "value": "1"}], "labels": {"team": "a"}}},
    "eks-preferred": {"replicas": 3, "spot": {"enabled": True, "provider": "eks", "mode": "preferred"},
                      "trainer": {"reporting": {"metricsPort": 9400}}},
}


def test_every_rank_pod_the_operator_creates_is_restricted(harness, operator, k8s_api):
    for name, spec in SHAPES.items():
        harness.create_job(name, **spec)
    checked = 0
    for name, spec in SHAPES.items():
        pods = harness.wait_pods(name, spec["replicas"], attempt=0)
        for pod in pods:
            as_dict = k8s_api.sanitize_for_serialization(pod)
            assert restricted_violations(as_dict) == [], (pod.metadata.name, as_dict["spec"])
            checked += 1
    assert checked == sum(s["replicas"] for s in SHAPES.values())
    # The same holds after a gang restart (a new attempt is built the same way).
    harness.exit("cpu-0-a0", 1)
    for pod in harness.wait_pods("cpu", 2, attempt=1):
        assert restricted_violations(k8s_api.sanitize_for_serialization(pod)) == []


def test_the_operators_own_pod_from_the_chart_is_restricted():
    for values in ((), ("watchNamespaces={a,b}", "metrics.serviceMonitor.enabled=true")):
        docs = render_chart("rel", "rectrain-system", *values)
        deployments = [d for d in docs if d["kind"] == "Deployment"]
        assert len(deployments) == 1
        template = deployments[0]["spec"]["template"]
        assert restricted_violations(template) == [], template["spec"]
