#!/usr/bin/env python3
"""The demo's API and static file server: what sits behind Envoy on the API cluster.

    python3 demo/api.py --port N [--host 127.0.0.1]

Outside /private it serves the SPA in demo/app/ (`/` is index.html). Under /private, where the
bff filter has put the access token on the request:

    GET /private/api/items   200 {"items": [...3 items],
                                  "seen": {"sub": <x-user-sub or null>,
                                           "email": <x-user-email or null>,
                                           "authorization": <true if "Bearer ..." arrived>}}
    GET /private/api/whoami  200 {"method", "path", "headers"}: the request as it arrived,
                             the authorization value shown as "Bearer [redacted]"
    GET /private/api/sensitive 200 {"approved": ...}: the "sensitive" action; the filter lets
                             only a session with the stronger login (acr) reach it (a rule
                             in envoy/envoy.yaml), so the API itself checks nothing
    anything else            404 {"error": "not_found", ...}

It never echoes a token: the demo shows that one arrived, not what it is. Prints
`DEMO API READY <port>` once listening; exits cleanly on SIGTERM. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

APP_DIR = Path(__file__).resolve().parent / "app"
PREFIX = "/private"

ITEMS = [
    {"id": 1, "name": "Pocket watch"},
    {"id": 2, "name": "Looking glass"},
    {"id": 3, "name": "Jar of orange marmalade"},
]

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

# The SPA loads only its own files and talks only to its own origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self'; connect-src 'self'; base-uri 'none'; "
                                "form-action 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def redact_authorization(value: str) -> str:
    scheme, _, _token = value.partition(" ")
    return f"{scheme} [redacted]" if scheme else "[redacted]"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-api"
    sys_version = ""

    # --- answers ---------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict, headers: dict | None = None):
        body = (json.dumps(payload, indent=1) + "\n").encode("utf-8")
        self._send(status, body, "application/json",
                   {"Cache-Control": "no-store", **(headers or {})})

    def _error(self, status: int, error: str, message: str, headers: dict | None = None):
        self._json(status, {"error": error, "message": message}, headers)

    # --- routing ---------------------------------------------------------------------------

    def _route(self):
        path = urlsplit(self.path).path
        if path == PREFIX or path.startswith(PREFIX + "/"):
            self._api(path)
        else:
            self._static(path)

    def _api(self, path: str):
        routes = {f"{PREFIX}/api/items": self._items, f"{PREFIX}/api/whoami": self._whoami,
                  f"{PREFIX}/api/sensitive": self._sensitive}
        handler = routes.get(path)
        if handler is None:
            self._error(404, "not_found", f"The demo API has no {path}.")
        elif self.command not in ("GET", "HEAD"):
            self._error(405, "method_not_allowed", f"{path} answers GET only.",
                        {"Allow": "GET, HEAD"})
        else:
            handler()

    def _items(self):
        authorization = self.headers.get("Authorization", "")
        self._json(200, {
            "items": ITEMS,
            "seen": {
                # Set by the bff filter from the session's claims (claim_headers); the filter
                # removes any the browser sent.
                "sub": self.headers.get("X-User-Sub"),
                "email": self.headers.get("X-User-Email"),
                # Whether an access token arrived; never the token itself.
                "authorization": authorization.startswith("Bearer ") and len(authorization) > 7,
            },
        })

    def _sensitive(self):
        self._json(200, {"approved": "refund #4711", "by": self.headers.get("X-User-Sub")})

    def _whoami(self):
        headers = {}
        for name, value in self.headers.items():
            key = name.lower()
            if key == "authorization":
                value = redact_authorization(value)
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self._json(200, {"method": self.command, "path": self.path, "headers": headers})

    def _static(self, path: str):
        if self.command not in ("GET", "HEAD"):
            self._error(405, "method_not_allowed", "Static files answer GET only.",
                        {"Allow": "GET, HEAD"})
            return
        name = unquote(path).lstrip("/") or "index.html"
        file = (APP_DIR / name).resolve()
        # Only regular files inside demo/app/, no dot files, nothing reached through "..".
        if (not file.is_relative_to(APP_DIR) or not file.is_file()
                or any(part.startswith(".") for part in file.relative_to(APP_DIR).parts)):
            self._send(404, b"Not found\n", "text/plain; charset=utf-8", SECURITY_HEADERS)
            return
        content_type = (CONTENT_TYPES.get(file.suffix)
                        or mimetypes.guess_type(file.name)[0] or "application/octet-stream")
        self._send(200, file.read_bytes(), content_type,
                   {"Cache-Control": "no-cache", **SECURITY_HEADERS})

    def __getattr__(self, name):
        # Every method Envoy forwards reaches _route, which answers 405 where it must.
        if name.startswith("do_"):
            return self._route
        raise AttributeError(name)

    def log_message(self, format, *args):  # noqa: A002 - the request line, never headers
        sys.stderr.write(f"api: {self.address_string()} {format % args}\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True

    def stop(_signum, _frame):
        # shutdown() waits for serve_forever to return, so it must run on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    print(f"DEMO API READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
