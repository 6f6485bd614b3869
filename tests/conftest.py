"""Shared fixtures: a real Envoy with the filter, the real OpenID Provider, the echo upstream.

Every process is started on free loopback ports and stopped by PID when the module ends,
pass or fail.
"""

from dataclasses import dataclass

import pytest

from harness.envoy import Envoy, filter_config, start_envoy
from harness.idp import Idp, start_idp
from harness.procs import ProcessGroup, free_port
from harness.upstream import start_echo

# Characters RFC 6749 §2.3.1 form-encoding changes (':' '/' '%' '+' and a space), so a login
# only works if the filter encodes client_secret_basic exactly right.
CLIENT_SECRET = "s3cr:t/with %chars+"


@dataclass
class Stack:
    idp: Idp
    envoy: Envoy
    echo_port: int


@pytest.fixture(scope="module")
def procs(request):
    group = ProcessGroup()
    request.addfinalizer(group.stop_all)
    return group


def start_stack(procs, **config_overrides) -> Stack:
    echo_port = start_echo(procs)
    envoy_port = free_port()
    idp = start_idp(procs, [f"http://127.0.0.1:{envoy_port}/private/callback"],
                    client_secret=CLIENT_SECRET)
    envoy = start_envoy(procs, filter_config(idp.issuer, **config_overrides), echo_port, idp.port,
                        client_secret=CLIENT_SECRET, port=envoy_port)
    return Stack(idp=idp, envoy=envoy, echo_port=echo_port)


@pytest.fixture(scope="module")
def stack(procs) -> Stack:
    """The default deployment: every setting at its default but the IdP's endpoints."""
    return start_stack(procs)
