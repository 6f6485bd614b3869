#!/usr/bin/env python3
"""The API upstream for the tests: answers every request with what it received.

    python3 tests/upstream/echo.py --port N [--host 127.0.0.1]

Every method on every path gets 200 application/json:

    {"method": "GET", "path": "/api/x?y=1",
     "headers": {"authorization": "Bearer ...", ...},   # names lowercased
     "body": "<request body as text>"}

A repeated header is joined with ", " (Cookie with "; ", as RFC 6265 §5.4 writes it).
A request with `X-Echo-Challenge: <value>` gets 401 with `WWW-Authenticate: <value>` instead
(an API's RFC 9470 step-up challenge), still with the echo as its body.
Prints `ECHO READY <port>` once listening; exits cleanly on SIGTERM. Standard library only.
"""

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "echo"
    sys_version = ""

    def _echo(self):
        headers = {}
        for name, value in self.headers.items():
            key = name.lower()
            if key in headers:
                sep = "; " if key == "cookie" else ", "
                headers[key] = headers[key] + sep + value
            else:
                headers[key] = value

        body = b""
        length = self.headers.get("Content-Length")
        if length:
            body = self.rfile.read(int(length))
        elif "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self._read_chunked()

        payload = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": headers,
                "body": body.decode("utf-8", errors="replace"),
            }
        ).encode("utf-8")
        challenge = self.headers.get("X-Echo-Challenge")
        self.send_response(401 if challenge else 200)
        if challenge:
            self.send_header("WWW-Authenticate", challenge)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_chunked(self):
        chunks = []
        while True:
            size_line = self.rfile.readline().split(b";", 1)[0].strip()
            size = int(size_line or b"0", 16)
            if size == 0:
                # Trailers, up to the blank line.
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # CRLF after the chunk

    def __getattr__(self, name):
        # Any method Envoy forwards (GET, POST, PUT, PATCH, DELETE, OPTIONS, HEAD, ...).
        if name.startswith("do_"):
            return self._echo
        raise AttributeError(name)

    def log_message(self, format, *args):  # noqa: A002 - quiet: no per-request log lines
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()

    server = ThreadingHTTPServer((args.host, args.port), EchoHandler)
    server.daemon_threads = True

    def stop(_signum, _frame):
        # shutdown() blocks until serve_forever returns, so call it from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    print(f"ECHO READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
