"""What pods mount, on this node's disk: each pod's own directory, its service-account token, its
configMap and secret volumes, and PersistentVolumes for the local StorageClass.

emptyDir and hostPath need nothing here: `pods.volume_mounts` maps them to paths under the pod's
directory (or the host path), and the launcher creates what is missing when it mounts them.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
from pathlib import Path

from kubernetes import client

log = logging.getLogger("rectrain.node")
TOKEN_SECONDS = 3600
STORAGE_CLASS = "rectrain-local"
PROVISIONER = "rectrain.io/local-node"
RUNTIME_ROOT = Path("/var/lib/rectrain-local")


class PodVolumes:
    """Provisions volumes and pod directories for one node (one state directory)."""

    def __init__(self, api: client.ApiClient, state_dir: Path, ca_data: bytes) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.ca_data = ca_data  # the cluster CA, handed to pods beside their token
        self.persistent_dir = state_dir / "cluster" / "node" / "persistent-volumes"
        # What pods reach by path (home, launch spec) lives where any uid can traverse to it, as
        # under /var/lib/kubelet; the state directory may sit below a private home directory.
        self.runtime_dir = RUNTIME_ROOT / hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:12]

    # ---- each pod's directory --------------------------------------------------------------------
    def pod_dir(self, uid: str) -> Path:
        return self.runtime_dir / "pods" / uid

    def prepare_pod_dir(self, uid: str) -> Path:
        """The pod's directory with its home in it, traversable by whatever uid the pod runs as."""
        pod_dir = self.pod_dir(uid)
        pod_dir.mkdir(parents=True, exist_ok=True)
        for directory in (RUNTIME_ROOT, self.runtime_dir, self.runtime_dir / "pods", pod_dir):
            directory.chmod(0o711)
        (pod_dir / "home").mkdir(exist_ok=True)
        return pod_dir

    def remove_pod_dir(self, uid: str) -> None:
        shutil.rmtree(self.pod_dir(uid), ignore_errors=True)

    def remove_all(self) -> None:
        """Every pod directory of this node (its persistent volumes stay)."""
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    # ---- volumes filled from the API -------------------------------------------------------------
    def write_service_account(self, pod: dict, pod_dir: Path) -> Path:
        """Files in-cluster clients read: a token bound to this pod, the CA, the namespace. Called
        again before the token expires; each file is replaced whole, so a reader never sees half."""
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        request = {
            "spec": {
                "audiences": None,
                "expirationSeconds": TOKEN_SECONDS,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
            }
        }
        token = self.core.create_namespaced_service_account_token(account, meta["namespace"], request).status.token
        directory = pod_dir / "serviceaccount"
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in (("token", token.encode()), ("ca.crt", self.ca_data), ("namespace", meta["namespace"].encode())):
            tmp = directory / f".{name}.tmp"
            tmp.write_bytes(content)
            tmp.chmod(0o644)
            tmp.replace(directory / name)
        return directory

    def project_config_volumes(self, pod: dict, pod_dir: Path) -> None:
        """Write each configMap and secret volume's keys as files where `pods.volume_mounts` looks."""
        for volume in pod["spec"].get("volumes") or []:
            target = pod_dir / "volumes" / volume["name"]
            if "configMap" in volume:
                source = self.core.read_namespaced_config_map(volume["configMap"]["name"], pod["metadata"]["namespace"])
                files = {k: v.encode() for k, v in (source.data or {}).items()}
            elif "secret" in volume:
                source = self.core.read_namespaced_secret(volume["secret"]["secretName"], pod["metadata"]["namespace"])
                files = {k: base64.b64decode(v) for k, v in (source.data or {}).items()}
            else:
                continue
            target.mkdir(parents=True, exist_ok=True)
            for key, content in files.items():
                (target / key).write_bytes(content)

    # ---- persistent volumes: a provisioner for the local StorageClass ------------------------------
    def ensure_storage_class(self) -> None:
        storage = client.StorageV1Api(self.api)
        body = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Retain",
            "volumeBindingMode": "Immediate",
        }
        try:
            storage.create_storage_class(body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise

    def provision_claims(self) -> None:
        """Give every pending claim of the local class a hostPath volume under the node's directory."""
        for claim in self.core.list_persistent_volume_claim_for_all_namespaces().items:
            if claim.status.phase != "Pending" or claim.spec.volume_name:
                continue
            if (claim.spec.storage_class_name or STORAGE_CLASS) != STORAGE_CLASS:
                continue
            try:
                self.core.create_persistent_volume(self._volume_for(claim))
            except client.ApiException as exc:
                if exc.status != 409:
                    log.warning("provisioning %s/%s failed: %s", claim.metadata.namespace, claim.metadata.name, exc.reason)

    def _volume_for(self, claim: client.V1PersistentVolumeClaim) -> dict:
        """A PersistentVolume bound to the claim, on a directory of its own (made now)."""
        meta = claim.metadata
        path = self.persistent_dir / meta.namespace / f"{meta.name}-{meta.uid[:8]}"
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        request = ((claim.spec.resources.requests or {}) if claim.spec.resources else {}).get("storage", "1Gi")
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"pvc-{meta.uid}", "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {
                "capacity": {"storage": request},
                "accessModes": claim.spec.access_modes or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": STORAGE_CLASS,
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {"namespace": meta.namespace, "name": meta.name, "uid": meta.uid},
            },
        }

    def claim_paths(self, pod: dict) -> dict[str, str]:
        """The host path of each of the pod's claims that is bound to a hostPath volume."""
        paths = {}
        for volume in pod["spec"].get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if not claim:
                continue
            try:
                bound = self.core.read_namespaced_persistent_volume_claim(claim, pod["metadata"]["namespace"]).spec.volume_name
                if bound:
                    host_path = self.core.read_persistent_volume(bound).spec.host_path
                    if host_path:
                        paths[claim] = host_path.path
            except client.ApiException:
                continue
        return paths
