#!/usr/bin/env python3
"""A token endpoint that misbehaves on purpose: the faults a real IdP will not produce on
demand (500s, garbage, huge bodies, redirects, silence). Only for the fault tests.

    python3 tests/upstream/faulty_idp.py --port N

POST /mode with the mode name as body picks what POST /token does next:
  ok-no-id-token  200 with an access token but no id_token
  500             500 with an HTML body
  garbage         200 with bytes that are not JSON
  huge            200 with a 1 MiB JSON string
  flood           200 with a 16 MiB JSON string, written in 64 KiB pieces; GET /calls then
                  says how many bytes went out and whether the client took them all
  redirect        302 to another place
  slow            answers after 10 s (longer than the filter's timeout)
  invalid-grant   400 {"error": "invalid_grant"}
GET /calls returns how many token requests arrived and the last one's headers and body.
GET /jwks answers an empty key set (the filter is configured with discovery off).
GET /.well-known/openid-configuration misbehaves per POST /discovery-mode (same mode names;
"ok" serves a document naming this server's endpoints).
Prints `FAULTY READY <port>`.
"""

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = {"mode": "500", "discovery_mode": "500", "calls": 0, "discovery_calls": 0, "last": None,
         "flood": None}
FLOOD_BYTES = 16 * 1024 * 1024
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, body: bytes, content_type="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _flood(self):
        # Far more than the kernel's socket buffers hold: a client that stops reading makes
        # the writes fail long before the end.
        piece = b"a" * (64 * 1024)
        head, tail = b'{"access_token":"', b'"}'
        sent, whole = 0, True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(head) + FLOOD_BYTES + len(tail)))
        self.end_headers()
        try:
            self.wfile.write(head)
            while sent < FLOOD_BYTES:
                self.wfile.write(piece)
                sent += len(piece)
            self.wfile.write(tail)
            self.wfile.flush()
        except OSError:
            whole = False
            self.close_connection = True
        with LOCK:
            STATE["flood"] = {"sent": sent, "whole": whole}

    def _discovery(self):
        with LOCK:
            STATE["discovery_calls"] += 1
            mode = STATE["discovery_mode"]
        issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        if mode == "ok":
            doc = {"issuer": issuer, "authorization_endpoint": issuer + "/auth",
                   "token_endpoint": issuer + "/token", "jwks_uri": issuer + "/jwks"}
            self._send(200, json.dumps(doc).encode())
        elif mode == "wrong-issuer":
            self._send(200, json.dumps({"issuer": "https://evil.example", "authorization_endpoint":
                                        issuer + "/auth", "token_endpoint": issuer + "/token",
                                        "jwks_uri": issuer + "/jwks"}).encode())
        elif mode == "500":
            self._send(500, b"<html>internal error</html>", "text/html")
        elif mode == "garbage":
            self._send(200, b"\x00\xff{not json")
        elif mode == "huge":
            self._send(200, b'{"issuer":"' + b"a" * (2 * 1024 * 1024) + b'"}')
        elif mode == "redirect":
            self._send(302, b"", extra=[("Location", "http://127.0.0.1:1/elsewhere")])
        elif mode == "slow":
            time.sleep(10)
            self._send(200, b"{}")
        else:
            self._send(500, b"unknown mode")

    def do_GET(self):
        if self.path == "/.well-known/openid-configuration":
            self._discovery()
        elif self.path == "/jwks":
            self._send(200, b'{"keys": []}')
        elif self.path == "/calls":
            with LOCK:
                self._send(200, json.dumps({"calls": STATE["calls"], "last": STATE["last"],
                                            "discovery_calls": STATE["discovery_calls"],
                                            "flood": STATE["flood"]}).encode())
        else:
            self._send(404, b"{}")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        if self.path in ("/mode", "/discovery-mode"):
            with LOCK:
                STATE["mode" if self.path == "/mode" else "discovery_mode"] = body.strip()
            return self._send(200, b"{}")
        if self.path != "/token":
            return self._send(404, b"{}")
        with LOCK:
            STATE["calls"] += 1
            STATE["last"] = {"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
            mode = STATE["mode"]
        if mode == "ok-no-id-token":
            self._send(200, b'{"access_token":"fault-at","token_type":"Bearer","expires_in":60}')
        elif mode == "500":
            self._send(500, b"<html>internal error</html>", "text/html")
        elif mode == "garbage":
            self._send(200, b"\x00\xff{not json")
        elif mode == "huge":
            self._send(200, b'{"access_token":"' + b"a" * (1024 * 1024) + b'"}')
        elif mode == "flood":
            self._flood()
        elif mode == "redirect":
            self._send(302, b"", extra=[("Location", "http://127.0.0.1:1/elsewhere")])
        elif mode == "slow":
            time.sleep(10)
            self._send(200, b"{}")
        elif mode == "invalid-grant":
            self._send(400, b'{"error":"invalid_grant","error_description":"bad code"}')
        else:
            self._send(500, b"unknown mode")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"FAULTY READY {args.port}", flush=True)
    server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
