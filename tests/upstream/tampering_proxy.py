#!/usr/bin/env python3
"""A proxy in front of the IdP that breaks one thing a real IdP never would: the authentication
tag of an encrypted ID token. Only for the tests of encrypted ID tokens.

    python3 tests/upstream/tampering_proxy.py --port N --upstream M

Every request goes to 127.0.0.1:M as it came (method, path, headers, body); the answer comes
back as it was, except a token endpoint answer (POST /token, 200, JSON) whose `id_token` is a
compact JWE (five parts): the middle byte of its last part, the tag, is flipped. GET
/test/tampered says how many were. Prints `TAMPER READY <port>`.
"""

import argparse
import base64
import http.client
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TAMPERED = {"count": 0}
LOCK = threading.Lock()
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


def flip_tag(token: str) -> str:
    parts = token.split(".")
    tag = bytearray(base64.urlsafe_b64decode(parts[4] + "=" * (-len(parts[4]) % 4)))
    tag[len(tag) // 2] ^= 1
    parts[4] = base64.urlsafe_b64encode(bytes(tag)).rstrip(b"=").decode()
    return ".".join(parts)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _forward(self):
        if self.path == "/test/tampered":
            with LOCK:
                body = json.dumps(TAMPERED).encode()
            return self._answer(200, [("Content-Type", "application/json")], body)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream.request(self.command, self.path, body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        kept = [(k, v) for k, v in answer.getheaders() if k.lower() not in HOP_BY_HOP]
        upstream.close()
        if self.command == "POST" and self.path.startswith("/token") and answer.status == 200:
            doc = json.loads(data)
            token = doc.get("id_token", "")
            if token.count(".") == 4:
                doc["id_token"] = flip_tag(token)
                data = json.dumps(doc).encode()
                with LOCK:
                    TAMPERED["count"] += 1
        self._answer(answer.status, kept, data)

    def _answer(self, status, headers, body):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _forward


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.upstream = args.upstream
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"TAMPER READY {args.port}", flush=True)
    server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
