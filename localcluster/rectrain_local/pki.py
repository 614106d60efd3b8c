"""A throwaway PKI for the local control plane, made with the openssl command line.

Kept across restarts of the same state directory, so kubeconfigs and service-account tokens stay valid.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .steps import StepFailed

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
KUBERNETES_SERVICE_IP = "10.0.0.1"


@dataclass(frozen=True)
class Pki:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.directory / "sa.pub"

    @property
    def token_file(self) -> Path:
        return self.directory / "tokens.csv"

    @property
    def admin_token(self) -> str:
        return self.token_file.read_text().split(",", 1)[0]

    def complete(self) -> bool:
        files = (self.ca_cert, self.ca_key, self.serving_cert, self.serving_key, self.sa_key, self.sa_pub, self.token_file)
        return all(path.is_file() for path in files)


def _openssl(args: list[str], cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StepFailed("generate PKI", ["openssl", *args], None, result.stderr.strip()[-500:])


def ensure_pki(directory: Path, extra_ips: tuple[str, ...] = ()) -> Pki:
    """Create the CA, the API server's serving cert, the service-account key pair and the admin token once."""
    pki = Pki(directory)
    if pki.complete():
        return pki
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    _openssl(
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
         "-days", "3650", "-subj", "/CN=rectrain-local-ca"],
        directory,
    )
    names = ["DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
             "DNS:kubernetes.default.svc.cluster.local", "IP:127.0.0.1", f"IP:{KUBERNETES_SERVICE_IP}"]
    names += [f"IP:{ip}" for ip in extra_ips]
    (directory / "san.ext").write_text(
        "subjectAltName=" + ",".join(names) + "\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
              "-subj", "/CN=kube-apiserver"], directory)
    _openssl(["x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
              "-out", "apiserver.crt", "-days", "3650", "-extfile", "san.ext"], directory)
    _openssl(["genrsa", "-out", "sa.key", "2048"], directory)
    _openssl(["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"], directory)
    token = secrets.token_hex(24)
    pki.token_file.write_text(f'{token},admin,admin-uid,"system:masters"\n')
    pki.token_file.chmod(0o600)
    return pki


def issue_node_serving_cert(pki: Pki, directory: Path, node_name: str, ips: tuple[str, ...]) -> tuple[Path, Path]:
    """A serving certificate for the node agent's kubelet endpoint, signed by the cluster CA.

    The API server verifies it (--kubelet-certificate-authority) when it proxies `kubectl logs`; it is
    issued afresh at every agent start because the node's address comes from its pod network."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    names = [f"DNS:{node_name}", *(f"IP:{ip}" for ip in ips)]
    (directory / "kubelet-san.ext").write_text("subjectAltName=" + ",".join(names) + "\nextendedKeyUsage=serverAuth\n")
    _openssl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "kubelet.key", "-out", "kubelet.csr",
              "-subj", f"/O=system:nodes/CN=system:node:{node_name}"], directory)
    _openssl(["x509", "-req", "-in", "kubelet.csr", "-CA", str(pki.ca_cert), "-CAkey", str(pki.ca_key), "-CAcreateserial",
              "-out", "kubelet.crt", "-days", "3650", "-extfile", "kubelet-san.ext"], directory)
    return directory / "kubelet.crt", directory / "kubelet.key"
