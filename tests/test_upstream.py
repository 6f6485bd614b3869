"""The echo upstream reports exactly what reached it: the integration tests read the
Authorization header and the cookies the filter forwarded from its answer."""

import http.client
import json
from urllib.parse import urlsplit

import pytest
import requests

from harness.upstream import start_echo


@pytest.fixture(scope="module")
def echo_url(procs):
    return f"http://127.0.0.1:{start_echo(procs)}"


def test_echoes_method_path_query_and_body(echo_url):
    r = requests.put(f"{echo_url}/api/items/7?x=1&y=%2F", data="héllo".encode(), timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    seen = r.json()
    assert seen["method"] == "PUT"
    assert seen["path"] == "/api/items/7?x=1&y=%2F"
    assert seen["body"] == "héllo"


def test_headers_are_lowercased_and_repeats_joined(echo_url):
    u = urlsplit(echo_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.putrequest("GET", "/h")
    conn.putheader("Authorization", "Bearer abc")
    conn.putheader("X-Multi", "one")
    conn.putheader("X-Multi", "two")
    conn.putheader("Cookie", "a=1")
    conn.putheader("Cookie", "b=2")
    conn.endheaders()
    headers = json.loads(conn.getresponse().read())["headers"]
    conn.close()
    assert headers["authorization"] == "Bearer abc"
    assert headers["x-multi"] == "one, two"
    assert headers["cookie"] == "a=1; b=2"
