"""The cluster layer: the only module of the operator that calls the Kubernetes API."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from rectrain_api import job as api

log = logging.getLogger("rectrain.cluster")


def load_client() -> client.ApiClient:
    """The in-cluster service account when running in a pod, else KUBECONFIG (or ~/.kube/config)."""
    try:
        config.load_incluster_config()
        cfg = client.Configuration.get_default_copy()
    except config.ConfigException:
        cfg = client.Configuration()
        config.load_kube_config(client_configuration=cfg)
    return client.ApiClient(cfg)


class ChildError(Exception):
    """Creating or deleting a child failed (the reconciler posts an Event and retries)."""

    def __init__(self, verb: str, kind: str, name: str, exc: Exception):
        self.verb, self.kind, self.name = verb, kind, name
        if isinstance(exc, ApiException):
            self.status = exc.status
            body = exc.body.decode() if isinstance(exc.body, bytes) else exc.body
            self.detail = _message(body) or exc.reason
        else:  # the typed client validates bodies itself (pydantic) before sending them
            self.status = 422
            self.detail = _pydantic_message(exc)
        super().__init__(f"{verb} {kind} {name}: {self.detail}")

    @property
    def invalid(self) -> bool:
        """The API server refused the object itself (422 Invalid / 400): retrying cannot help."""
        return self.verb == "create" and self.status in (400, 422) and not self.transient

    @property
    def transient(self) -> bool:
        """Service-account tokens not minted yet, throttling, conflicts: retry quietly."""
        text = (self.detail or "").lower()
        # A ServiceAccount that does not exist (a typo in spec.pod.serviceAccountName) is no token that is
        # about to be minted: it gets a Warning Event instead of a quiet retry four times a second.
        account = ("serviceaccount" in text or "service account" in text) and "not found" not in text
        return self.status in (409, 429, 500, 503, 504) or account


def _pydantic_message(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            # loc is (arg index, field path...): drop the argument index.
            return "; ".join(
                f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in errors()
            )
        except Exception:
            pass
    return str(exc).splitlines()[0]


def _message(body: Any) -> str | None:
    import json

    try:
        return json.loads(body).get("message")
    except Exception:
        return None


class Cluster:
    def __init__(self, api_client: client.ApiClient):
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    # ---------------------------------------------------------------------------- jobs

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_jobs(self, namespaces: list[str] | None) -> list[dict[str, Any]]:
        if not namespaces:
            return self.custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL)["items"]
        items: list[dict[str, Any]] = []
        for ns in namespaces:
            items += self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL)["items"]
        return items

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """JSON merge patch of the operator's own status fields (never progress/metrics)."""
        assert not set(status) & set(api.TRAINER_STATUS_FIELDS)
        self.custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": status},
            _content_type="application/merge-patch+json",
        )

    # ---------------------------------------------------------------------------- pods

    def list_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        selector = f"{api.LABEL_JOB_NAME}={job_name},{api.LABEL_RANK}"
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector)
        return [self.api_client.sanitize_for_serialization(p) for p in pods.items]

    def create(self, obj: dict[str, Any]) -> bool:
        """Create a child; True when created, False when it already existed."""
        kind, meta = obj["kind"], obj["metadata"]
        ns = meta["namespace"]
        try:
            if kind == "Pod":
                self.core.create_namespaced_pod(ns, obj)
            elif kind == "Service":
                self.core.create_namespaced_service(ns, obj)
            elif kind == "ServiceAccount":
                self.core.create_namespaced_service_account(ns, obj)
            elif kind == "Role":
                self.rbac.create_namespaced_role(ns, obj)
            elif kind == "RoleBinding":
                self.rbac.create_namespaced_role_binding(ns, obj)
            else:
                raise ValueError(kind)
        except ApiException as exc:
            if exc.status == 409 and "already exists" in str(exc.body):
                self._replace_if_stale(obj)
                return False
            raise ChildError("create", kind, meta["name"], exc) from exc
        except ValidationError as exc:
            raise ChildError("create", kind, meta["name"], exc) from exc
        return True

    def _replace_if_stale(self, obj: dict[str, Any]) -> None:
        """A child of the same name owned by an earlier job of the same name (deleted, its children not
        yet garbage-collected) must not be adopted: delete it and let the reconcile retry."""
        kind, meta = obj["kind"], obj["metadata"]
        readers = {
            "Pod": self.core.read_namespaced_pod, "Service": self.core.read_namespaced_service,
            "ServiceAccount": self.core.read_namespaced_service_account,
            "Role": self.rbac.read_namespaced_role, "RoleBinding": self.rbac.read_namespaced_role_binding,
        }
        wanted = {ref["uid"] for ref in meta.get("ownerReferences") or []}
        try:
            existing = readers[kind](meta["name"], meta["namespace"])
        except ApiException as exc:
            if exc.status == 404:
                raise ChildError("create", kind, meta["name"], exc) from exc  # gone meanwhile: retry
            raise ChildError("read", kind, meta["name"], exc) from exc
        owners = {ref.uid for ref in existing.metadata.owner_references or []}
        if wanted and not owners & wanted:
            self.delete(kind, meta["namespace"], meta["name"])
            raise ChildError("create", kind, meta["name"],
                             ApiException(status=409, reason=f"replacing a stale {kind} left by an earlier job of the same name"))

    def delete(self, kind: str, namespace: str, name: str, grace: int | None = None) -> bool:
        """Delete a child; False when it was already gone."""
        opts = client.V1DeleteOptions(propagation_policy="Background", grace_period_seconds=grace)
        # _preload_content=False: 1.20 answers some deletes with a Status, which the typed client
        # fails to parse as the deleted object.
        raw = {"body": opts, "_preload_content": False}
        try:
            if kind == "Pod":
                self.core.delete_namespaced_pod(name, namespace, **raw)
            elif kind == "Service":
                self.core.delete_namespaced_service(name, namespace, **raw)
            elif kind == "ServiceAccount":
                self.core.delete_namespaced_service_account(name, namespace, **raw)
            elif kind == "Role":
                self.rbac.delete_namespaced_role(name, namespace, **raw)
            elif kind == "RoleBinding":
                self.rbac.delete_namespaced_role_binding(name, namespace, **raw)
            else:
                raise ValueError(kind)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise ChildError("delete", kind, name, exc) from exc
        return True

    # --------------------------------------------------------------------------- events

    def post_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = job["metadata"]
        now = datetime.now(timezone.utc)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "count": 1,
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "source": {"component": api.MANAGED_BY},
            "reportingComponent": api.MANAGED_BY,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as exc:  # events are best effort
            log.warning("could not post event %s/%s: %s", reason, meta["name"], exc.reason)
