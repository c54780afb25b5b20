"""A tiny real HTTP server on loopback that records what it receives and answers as scripted.

    with RecordingServer(lambda req: (200, "application/x-ndjson", b"[1]\\n")) as server:
        httpx.post(server.url + "/x", json={"a": 1})
        server.requests[0].path, server.requests[0].json()

For what a real peer would never send (malformed streams) and for checking exactly what a client
sent and where; real sockets, real HTTP/1.1, nothing patched.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = field(repr=False)

    def json(self) -> Any:
        return json.loads(self.body)


Answer = Callable[[Recorded], tuple[int, str, bytes]]


class RecordingServer:
    def __init__(self, answer: Answer):
        self.answer = answer
        self.requests: list[Recorded] = []
        self.extra_headers: list[tuple[str, str]] = []  # sent with every answer
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                got = Recorded(self.command, self.path, dict(self.headers), self.rfile.read(length))
                server.requests.append(got)
                status, media_type, body = server.answer(got)
                self.send_response(status)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in server.extra_headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _handle

            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
