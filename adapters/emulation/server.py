"""A loopback HTTP server for an emulator: a WSGI app served by werkzeug on a background thread,
with a log of every request it received."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator received it, with what the vendor spec said about it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    violations: tuple[str, ...] = ()

    def json(self) -> Any:
        import json

        return json.loads(self.body or b"null")


@dataclass
class RequestLog:
    """Thread-safe list of received requests; tests read it to count and to check contracts."""

    entries: list[RecordedRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, entry: RecordedRequest) -> None:
        with self._lock:
            self.entries.append(entry)

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self.entries)

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()

    def count(
        self, method: str | None = None, path_prefix: str = "", exact: str | None = None
    ) -> int:
        return sum(
            1
            for e in self.snapshot()
            if (method is None or e.method == method)
            and e.path.startswith(path_prefix)
            and (exact is None or e.path == exact)
        )

    def violations(self) -> list[str]:
        return [
            f"{e.method} {e.path}{'?' + e.query if e.query else ''}: {v}"
            for e in self.snapshot()
            for v in e.violations
        ]


Handler = Callable[[Request], Response]


class ConnectionDropped(ConnectionResetError):
    """Raised by a handler after `drop_connection`: werkzeug treats it as a dropped client."""


def drop_connection(request: Request) -> ConnectionDropped:
    """Close the client's socket without an answer (a write that committed, then the network
    failed); `raise drop_connection(request)` from a handler after committing the state.

    The client sees a reset or an empty reply: its outcome is unknown."""
    sock = request.environ.get("werkzeug.socket")
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    return ConnectionDropped("emulator dropped the connection after committing")


class _QuietHandler(WSGIRequestHandler):
    """The request log is the emulator's record; werkzeug's access log would only be noise."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


class EmulatorServer:
    """Serve `handler` on 127.0.0.1 (port 0 picks a free one) until `stop()`."""

    def __init__(self, handler: Handler, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        response = self._handler(request)
        return response(environ, start_response)

    def start(self) -> str:
        if self._server is None:
            self._server = make_server(
                self._host, self._port, self._wsgi, threaded=True, request_handler=_QuietHandler
            )
            self._thread = threading.Thread(
                # a short poll so stop() returns at once (werkzeug's default waits 0.5 s)
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="emulator",
                daemon=True,
            )
            self._thread.start()
        return self.url

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return f"http://{self._host}:{self._server.server_port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class ServedEmulator:
    """The lifecycle every emulator shares: served by one `EmulatorServer` (`self._server`),
    started and stopped idempotently, usable as a context manager."""

    _server: EmulatorServer

    def start(self) -> str:
        """Serve on 127.0.0.1 (a free port); return the base URL, e.g. http://127.0.0.1:PORT."""
        return self._server.start()

    def stop(self) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        return self._server.url

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
