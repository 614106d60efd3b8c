"""The wire path: one JSON merge-patch on a RecTrainJob's status subresource, over HTTPS, with the
pod's projected service-account token and CA. Standard library only (urllib + ssl).

    PATCH https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
          /apis/rectrain.io/v1alpha1/namespaces/$RECTRAIN_JOB_NAMESPACE/rectrainjobs/$RECTRAIN_JOB_NAME/status
    Content-Type: application/merge-patch+json
    Authorization: Bearer <token file>
    {"status": {"progress": {...}, "metrics": {...}}}

The per-job Role the operator creates allows exactly this (get/patch on this job's status).
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

GROUP = "rectrain.io"
PLURAL = "rectrainjobs"
DEFAULT_VERSION = "v1alpha1"
MERGE_PATCH = "application/merge-patch+json"

# What the operator puts into every rank pod (rectrain_api.trainer_config holds the same names).
JOB_NAME_ENV = "RECTRAIN_JOB_NAME"
JOB_NAMESPACE_ENV = "RECTRAIN_JOB_NAMESPACE"
JOB_UID_ENV = "RECTRAIN_JOB_UID"  # record it in checkpoints; report the resumed one's as progress.checkpointJobUid
CHECKPOINT_DIR_ENV = "RECTRAIN_CHECKPOINT_DIR"
API_VERSION_ENV = "RECTRAIN_API_VERSION"  # override of the CRD version to patch
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class PatchError(Exception):
    """The API server answered with an error, or could not be reached (status None)."""

    def __init__(self, status: int | None, reason: str):
        super().__init__(f"HTTP {status} {reason}".strip() if status else reason)
        self.status = status
        self.reason = reason


@dataclass
class Connection:
    """Where and as whom to patch. `token_file` is read on every request: projected tokens rotate."""

    server: str  # https://host:port
    token_file: str | None = None
    # An Authorization header value ("Bearer abc"), or a function giving the current one.
    authorization: str | Callable[[], str | None] | None = None
    ca_file: str | None = None
    cert_file: str | None = None  # client certificate (kubeconfig users), with key_file
    key_file: str | None = None
    verify: bool = True
    _context: ssl.SSLContext | None = field(default=None, init=False, repr=False)

    @classmethod
    def in_cluster(cls, sa_dir: str | None = None) -> Connection | None:
        """The pod's own API server and credentials, or None outside a pod."""
        sa_dir = sa_dir or SERVICE_ACCOUNT_DIR
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        token = os.path.join(sa_dir, "token")
        if not host or not port or not os.path.isfile(token):
            return None
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        ca = os.path.join(sa_dir, "ca.crt")
        return cls(server=f"https://{host}:{port}", token_file=token, ca_file=ca if os.path.isfile(ca) else None)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": MERGE_PATCH, "Accept": "application/json"}
        if self.token_file:
            with open(self.token_file, encoding="ascii") as f:
                headers["Authorization"] = f"Bearer {f.read().strip()}"
        elif self.authorization:
            value = self.authorization() if callable(self.authorization) else self.authorization
            if value:
                headers["Authorization"] = value
        return headers

    def ssl_context(self) -> ssl.SSLContext:
        if self._context is None:
            context = ssl.create_default_context(cafile=self.ca_file)
            if not self.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file)
            self._context = context
        return self._context


def status_url(conn: Connection, name: str, namespace: str, version: str = DEFAULT_VERSION) -> str:
    return f"{conn.server.rstrip('/')}/apis/{GROUP}/{version}/namespaces/{namespace}/{PLURAL}/{name}/status"


def patch_status(conn: Connection, name: str, namespace: str, status: dict[str, Any], *,
                 version: str = DEFAULT_VERSION, timeout: float = 10.0) -> None:
    """Merge `status` into the job's status; raises PatchError on any failure."""
    body = json.dumps({"status": status}, allow_nan=False).encode()
    request = urllib.request.Request(status_url(conn, name, namespace, version), data=body, method="PATCH")
    try:
        for key, value in conn.headers().items():
            request.add_header(key, value)
        context = conn.ssl_context() if conn.server.startswith("https:") else None
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            response.read()
    except urllib.error.HTTPError as e:
        raise PatchError(e.code, str(e.reason or "")) from None
    except (OSError, ValueError, ssl.SSLError) as e:  # refused, timed out, TLS, unreadable token
        raise PatchError(None, f"{type(e).__name__}: {e}"[:300]) from None
