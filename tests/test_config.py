"""A bad configuration makes Envoy refuse the filter, with one log line naming every field at
fault, and never a secret's value."""

import pytest

from harness.envoy import KEY_A, filter_config, refused


def test_every_bad_field_is_named_in_one_line(procs):
    line = refused(procs, filter_config(
        "http://127.0.0.1:1", client_id=None, token_endpoint="ftp://idp/token",
        cookie={"same_site": "None", "name": "__Host-s", "secure": False},
        upstream_token={"header": "x-token", "format": "Bearer"},
        login_path="/elsewhere/login", session={"refresh_result_slots": 8}),
        cookie_keys="c2hvcnQ=")
    for field in ["client_id: is required", "token_endpoint: must be an absolute URL",
                  "cookie.same_site", "cookie.secure", "cookie_keys: key #1 decodes to 5 bytes",
                  "upstream_token.format: must contain {token}", "login_path: must lie under",
                  "session.refresh_result_slots: must be between 64 and 65536"]:
        assert field in line, (field, line)


def test_missing_secrets_name_the_environment_variable(procs):
    line = refused(procs, filter_config("http://127.0.0.1:1"), client_secret="", cookie_keys="")
    assert "client_secret: environment variable BFF_CLIENT_SECRET is not set" in line
    assert "cookie_keys: environment variable BFF_COOKIE_KEYS is not set" in line


def test_typos_and_broken_json_are_refused(procs):
    config = filter_config("http://127.0.0.1:1")
    config["isuer"] = config.pop("issuer")
    assert "unknown field `isuer`" in refused(procs, config)


@pytest.mark.parametrize("keys", ["not base64!!", f"{KEY_A},{KEY_A}"])
def test_bad_cookie_keys_never_echo_the_key(procs, keys):
    line = refused(procs, filter_config("http://127.0.0.1:1"), cookie_keys=keys)
    assert "cookie_keys" in line
    assert KEY_A not in line and "not base64!!" not in line
