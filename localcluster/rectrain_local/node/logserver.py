"""The node's kubelet endpoint, as far as `kubectl logs` needs it.

The API server serves `GET /api/v1/namespaces/N/pods/P/log` by calling the pod's node at
`https://<node InternalIP>:<daemonEndpoints.kubeletEndpoint.Port>/containerLogs/N/P/C` with its kubelet
client certificate. This server answers that path (and /healthz) over TLS, accepts only clients with a
certificate from the cluster CA whose common name is the API server's, and streams the pod's log file:
`tailLines`, `limitBytes`, `follow` (until the container exits or the client goes away) and `previous`
(the run before the last in-place restart) behave as on a kubelet. `timestamps` and `sinceSeconds`
are accepted and ignored: the node keeps the raw output only.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("rectrain.node.logs")
API_SERVER_CLIENT = "kube-apiserver"
FOLLOW_POLL_SECONDS = 0.2
CHUNK = 65536
HANDSHAKE_SECONDS = 10


@dataclass(frozen=True)
class LogSource:
    current: Path
    previous: Path | None
    running: Callable[[], bool]  # whether the container may still write to `current`


# (namespace, pod) -> the pod's log files, or None when this node never ran it.
Resolver = Callable[[str, str], "LogSource | None"]


@dataclass(frozen=True)
class LogQuery:
    follow: bool = False
    previous: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None

    @classmethod
    def parse(cls, query: str) -> "LogQuery":
        params = {k: v[-1] for k, v in parse_qs(query).items()}

        def flag(name: str) -> bool:
            return params.get(name, "false").lower() in ("true", "1")

        def count(name: str) -> int | None:
            if name not in params:
                return None
            value = int(params[name])  # ValueError -> 400
            if value < 0:
                raise ValueError(f"{name} must not be negative")
            return value

        return cls(flag("follow"), flag("previous"), count("tailLines"), count("limitBytes"))


def tail_offset(path: Path, lines: int) -> int:
    """Byte offset where the last `lines` lines of the file start."""
    size = path.stat().st_size
    if lines == 0:
        return size
    with path.open("rb") as handle:
        pos, found = size, 0
        # A final newline ends the last line; it does not start another.
        handle.seek(max(0, size - 1))
        skip_last = handle.read(1) == b"\n"
        while pos > 0:
            step = min(CHUNK, pos)
            pos -= step
            handle.seek(pos)
            block = handle.read(step)
            end = len(block) - 1 if skip_last and pos + step == size else len(block)
            idx = end
            while True:
                idx = block.rfind(b"\n", 0, idx)
                if idx < 0:
                    break
                found += 1
                if found == lines:
                    return pos + idx + 1
    return 0


class _Handler(BaseHTTPRequestHandler):
    server: "LogServer"

    def setup(self) -> None:
        self.request.settimeout(HANDSHAKE_SECONDS)
        self.request.do_handshake()
        self.request.settimeout(None)
        super().setup()

    def handle(self) -> None:
        try:
            super().handle()
        except (ssl.SSLError, OSError) as exc:  # a failed handshake or a dropped client is not the node's problem
            log.debug("log request from %s ended: %s", self.client_address, exc)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        if url.path == "/healthz":
            return self._reply(200, "ok")
        cert = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        subject = dict(item for rdn in (cert or {}).get("subject", ()) for item in rdn)
        if subject.get("commonName") != API_SERVER_CLIENT:
            return self._reply(403, f"forbidden: only {API_SERVER_CLIENT} may read logs here")
        parts = [unquote(p) for p in url.path.split("/")]
        if len(parts) != 5 or parts[1] != "containerLogs":
            return self._reply(404, "not found")
        namespace, pod = parts[2], parts[3]
        try:
            query = LogQuery.parse(url.query)
        except ValueError as exc:
            return self._reply(400, f"bad query: {exc}")
        source = self.server.resolve(namespace, pod)
        if source is None:
            return self._reply(404, f"pod {namespace}/{pod} has no log on this node")
        path = source.previous if query.previous else source.current
        if path is None or not path.is_file():
            return self._reply(400, f"previous terminated container in pod {namespace}/{pod} not found"
                               if query.previous else f"container in pod {namespace}/{pod} has not started")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        try:
            self._stream(path, query, source.running if not query.previous else (lambda: False))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the client went away (kubectl logs -f interrupted)

    def _stream(self, path: Path, query: LogQuery, running: Callable[[], bool]) -> None:
        budget = query.limit_bytes
        with path.open("rb") as handle:
            if query.tail_lines is not None:
                handle.seek(tail_offset(path, query.tail_lines))
            while budget is None or budget > 0:
                chunk = handle.read(CHUNK if budget is None else min(CHUNK, budget))
                if chunk:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    if budget is not None:
                        budget -= len(chunk)
                    continue
                if not query.follow or self.server.stopping.is_set():
                    return
                alive = running()
                chunk = handle.read(CHUNK if budget is None else min(CHUNK, budget))
                if chunk:  # written between the read and the check
                    handle.seek(-len(chunk), 1)
                    continue
                if not alive:
                    return
                time.sleep(FOLLOW_POLL_SECONDS)

    def _reply(self, code: int, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class LogServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str, port: int, cert: Path, key: Path, ca: Path, resolve: Resolver) -> None:
        super().__init__((address, port), _Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_OPTIONAL  # /healthz without a certificate; logs check it
        # The handshake happens in the handler's thread, on first use, not in the accepting loop.
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.resolve = resolve
        self.stopping = threading.Event()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 - socketserver's signature
        # socketserver prints the traceback to stderr; as a record it stays one line of the JSON log.
        log.exception("log request from %s failed", client_address)

    def start(self) -> "LogServer":
        threading.Thread(target=self.serve_forever, name="kubelet-endpoint", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
