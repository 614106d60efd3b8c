"""The cluster layer: the only module of the operator that calls the Kubernetes API.

Requests go through the kubernetes client's ApiClient (its configuration, authentication, TLS and
connection pool) but send and return plain JSON dicts: the typed API methods validate every body
into pydantic models and parse every answer into them (several milliseconds of CPU per pod, more
than the API server spends creating it), and the operator works on dicts anyway.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timezone
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from rectrain_api import job as api
from rectrain_api.timestamps import fmt_time

from rectrain_operator.podgroup import GroupKind

log = logging.getLogger("rectrain.cluster")


# Connections kept open to the API server: the workers' requests in flight (up to CREATE_CONCURRENCY
# pod creates per worker) must not exceed it, or urllib3 opens a new TLS connection for each request
# over the limit and throws it away afterwards (the client's default is 5 per CPU).
CONNECTION_POOL_SIZE = 64


def load_client() -> client.ApiClient:
    """The in-cluster service account when running in a pod, else KUBECONFIG (or ~/.kube/config)."""
    try:
        config.load_incluster_config()
        cfg = client.Configuration.get_default_copy()
    except config.ConfigException:
        cfg = client.Configuration()
        config.load_kube_config(client_configuration=cfg)
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, CONNECTION_POOL_SIZE)
    return client.ApiClient(cfg)


class ChildError(Exception):
    """Creating or deleting a child failed (the reconciler posts an Event and retries)."""

    def __init__(self, verb: str, kind: str, name: str, exc: ApiException):
        self.verb, self.kind, self.name = verb, kind, name
        self.status = exc.status
        body = exc.body.decode() if isinstance(exc.body, bytes) else exc.body
        self.detail = _message(body) or exc.reason
        super().__init__(f"{verb} {kind} {name}: {self.detail}")

    @property
    def rejection(self) -> str:
        """Why the job fails when this child is invalid (the Failed condition's message)."""
        return f"{self.kind} {self.name} is invalid: {self.detail}"

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


def _message(body: Any) -> str | None:
    import json

    try:
        return json.loads(body).get("message")
    except Exception:
        return None


class GangApiMissing(ChildError):
    """The cluster does not serve the PodGroup API of spec.scheduling.gang (its CRD is not installed):
    no retry helps until someone installs it, so the job fails before any pod exists."""

    def __init__(self, name: str, crd_hint: str, exc: ApiException):
        super().__init__("create", "PodGroup", name, exc)
        self.detail = crd_hint

    @property
    def invalid(self) -> bool:
        return True

    @property
    def rejection(self) -> str:
        return self.detail


# kind -> (API prefix, resource) of the children the operator creates, reads and deletes.
_RESOURCES = {
    "Pod": ("/api/v1", "pods"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Event": ("/api/v1", "events"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
}
_JOBS = f"/apis/{api.GROUP}/{api.VERSION}"


def _podgroup_path(kind: GroupKind, namespace: str, name: str | None = None) -> str:
    return f"/apis/{kind.api_version}/namespaces/{namespace}/{kind.plural}" + (f"/{name}" if name else "")


def _path(kind: str, namespace: str, name: str | None = None) -> str:
    try:
        prefix, resource = _RESOURCES[kind]
    except KeyError:
        raise ValueError(kind) from None
    return f"{prefix}/namespaces/{namespace}/{resource}" + (f"/{name}" if name else "")


class Cluster:
    def __init__(self, api_client: client.ApiClient):
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def _request(self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None,
                 content_type: str = "application/json") -> dict[str, Any]:
        """One API request with a JSON body (a dict, sent as is) and a JSON answer (a dict); a non-2xx
        answer raises ApiException (its subclass for the status), like the typed client does."""
        ac = self.api_client
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, body, _ = ac.param_serialize(
            method=method, resource_path=path, query_params=query or None, header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )
        rsp = ac.call_api(method, url, header_params=headers, body=body)
        rsp.read()  # also hands the connection back to the pool
        text = rsp.data.decode("utf-8") if rsp.data else ""
        if not 200 <= rsp.status <= 299:
            raise ApiException.from_response(http_resp=rsp, body=text, data=None)
        return json.loads(text) if text else {}

    # ---------------------------------------------------------------------------- jobs

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._request("GET", f"{_JOBS}/namespaces/{namespace}/{api.PLURAL}/{name}")
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

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of the operator's own status fields (never progress/metrics); the job as patched."""
        assert not set(status) & set(api.TRAINER_STATUS_FIELDS)
        return self._request("PATCH", f"{_JOBS}/namespaces/{namespace}/{api.PLURAL}/{name}/status", {"status": status},
                             content_type="application/merge-patch+json")

    # ---------------------------------------------------------------------------- pods

    def list_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        """The job's rank pods and capacity probes."""
        selector = f"{api.LABEL_JOB_NAME}={job_name}"
        return self._request("GET", _path("Pod", namespace), query=[("labelSelector", selector)]).get("items") or []

    def create(self, obj: dict[str, Any]) -> bool:
        """Create a child; True when created, False when it already existed."""
        kind, meta = obj["kind"], obj["metadata"]
        ns = meta["namespace"]
        if kind not in ("Pod", "Service", "ServiceAccount", "Role", "RoleBinding"):
            raise ValueError(kind)
        try:
            self._request("POST", _path(kind, ns), obj)
        except ApiException as exc:
            if exc.status == 409 and "already exists" in str(exc.body):
                self._replace_if_stale(obj)
                return False
            raise ChildError("create", kind, meta["name"], exc) from exc
        return True

    def _replace_if_stale(self, obj: dict[str, Any]) -> None:
        """A child of the same name owned by an earlier job of the same name (deleted, its children not
        yet garbage-collected) must not be adopted: delete it and let the reconcile retry."""
        kind, meta = obj["kind"], obj["metadata"]
        wanted = {ref["uid"] for ref in meta.get("ownerReferences") or []}
        try:
            existing = self._request("GET", _path(kind, meta["namespace"], meta["name"]))
        except ApiException as exc:
            if exc.status == 404:
                raise ChildError("create", kind, meta["name"], exc) from exc  # gone meanwhile: retry
            raise ChildError("read", kind, meta["name"], exc) from exc
        owners = {ref.get("uid") for ref in (existing.get("metadata") or {}).get("ownerReferences") or []}
        if wanted and not owners & wanted:
            self.delete(kind, meta["namespace"], meta["name"])
            raise ChildError("create", kind, meta["name"],
                             ApiException(status=409, reason=f"replacing a stale {kind} left by an earlier job of the same name"))

    def delete(self, kind: str, namespace: str, name: str, grace: int | None = None) -> bool:
        """Delete a child; False when it was already gone."""
        # The answer (the deleted object, or a Status: 1.20 answers some deletes that way) is not needed.
        opts: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if grace is not None:
            opts["gracePeriodSeconds"] = grace
        if kind not in ("Pod", "Service", "ServiceAccount", "Role", "RoleBinding"):
            raise ValueError(kind)
        try:
            self._request("DELETE", _path(kind, namespace, name), opts)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise ChildError("delete", kind, name, exc) from exc
        return True

    # ------------------------------------------------------------------------ podgroups

    def create_podgroup(self, obj: dict[str, Any], kind: GroupKind, crd_hint: str) -> bool:
        """Create a gang scheduler's PodGroup; True when created, False when it was there already.
        A cluster that does not serve the PodGroup API raises GangApiMissing (the job fails: no pod is
        created), one that forbids it a ChildError whose message points at the chart value."""
        meta = obj["metadata"]
        path = _podgroup_path(kind, meta["namespace"])
        try:
            self._request("POST", path, obj)
        except ApiException as exc:
            if exc.status == 404:
                raise GangApiMissing(meta["name"], crd_hint, exc) from exc
            if exc.status == 403:
                exc.body = json.dumps({"message": f"{_message(exc.body) or exc.reason} (the operator's RBAC needs "
                                                  f"gangScheduling.enabled=true in the Helm chart values)"})
            if exc.status == 409 and "already exists" in str(exc.body):
                self._replace_podgroup_if_stale(obj, kind)
                return False
            raise ChildError("create", "PodGroup", meta["name"], exc) from exc
        return True

    def _replace_podgroup_if_stale(self, obj: dict[str, Any], kind: GroupKind) -> None:
        """A PodGroup of the same name left by an earlier job of the same name is not adopted (as _replace_if_stale)."""
        meta = obj["metadata"]
        existing = self.get_podgroup(kind, meta["namespace"], meta["name"])
        owners = {ref.get("uid") for ref in ((existing or {}).get("metadata") or {}).get("ownerReferences") or []}
        if existing is not None and not owners & {ref["uid"] for ref in meta["ownerReferences"]}:
            self.delete_podgroup(kind, meta["namespace"], meta["name"])
            raise ChildError("create", "PodGroup", meta["name"],
                             ApiException(status=409, reason="replacing a stale PodGroup left by an earlier job of the same name"))

    def get_podgroup(self, kind: GroupKind, namespace: str, name: str) -> dict[str, Any] | None:
        """The PodGroup, or None when it (or its API) does not exist."""
        try:
            return self._request("GET", _podgroup_path(kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_podgroups(self, kind: GroupKind, namespace: str, job_name: str) -> list[dict[str, Any]]:
        """The job's PodGroups (every attempt's); none when the API does not exist."""
        try:
            answer = self._request("GET", _podgroup_path(kind, namespace),
                                   query=[("labelSelector", f"{api.LABEL_JOB_NAME}={job_name}")])
        except ApiException as exc:
            if exc.status == 404:
                return []
            raise ChildError("list", "PodGroup", job_name, exc) from exc
        return answer.get("items") or []

    def delete_podgroup(self, kind: GroupKind, namespace: str, name: str) -> bool:
        """Delete a PodGroup; False when it was already gone."""
        try:
            self._request("DELETE", _podgroup_path(kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise ChildError("delete", "PodGroup", name, exc) from exc
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
            "firstTimestamp": fmt_time(now),
            "lastTimestamp": fmt_time(now),
            "source": {"component": api.MANAGED_BY},
            "reportingComponent": api.MANAGED_BY,
        }
        try:
            self._request("POST", _path("Event", meta["namespace"]), body)
        except ApiException as exc:  # events are best effort
            log.warning("could not post event %s/%s: %s", reason, meta["name"], exc.reason)
