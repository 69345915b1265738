"""A real webhook on 127.0.0.1 for the notification tests: an ``http.server`` in a thread.

It records every POST (headers and JSON body) and answers with the next scripted status
(then 200). With ``hang=True`` each request waits, before answering, until ``release()``:
a webhook slower than any timeout. ``wait_for(n)`` waits on a condition, not a sleep.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections import deque
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookServer:
    def __init__(self, statuses: Iterable[int] = (), *, hang: bool = False):
        self.statuses = deque(statuses)
        self.hang = hang
        self.requests: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._released = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-path"

    def bodies(self) -> list[dict[str, Any]]:
        with self._changed:
            return [r["json"] for r in self.requests]

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        """Until ``n`` requests have arrived (True), or ``timeout`` seconds (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.requests) >= n, timeout)

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hook._changed:
                    hook.requests.append({"headers": dict(self.headers), "json": json.loads(body)})
                    status = hook.statuses.popleft() if hook.statuses else 200
                    hook._changed.notify_all()
                if hook.hang:
                    hook._released.wait(30)
                with contextlib.suppress(OSError):  # the client gave up (its timeout) meanwhile
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (a webhook that is down: connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"
