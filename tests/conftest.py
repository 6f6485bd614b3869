"""Shared fixtures: the process group every test starts its processes in, and the default
stack (a real Envoy with the filter, the real OpenID Provider, the echo upstream).

Every process is started on free loopback ports and stopped by PID when the module ends,
pass or fail.
"""

import pytest

from harness.procs import ProcessGroup
from harness.stack import Stack, start_stack


@pytest.fixture(scope="module")
def procs(request):
    group = ProcessGroup()
    request.addfinalizer(group.stop_all)
    return group


@pytest.fixture(scope="module")
def stack(procs) -> Stack:
    """The default deployment: every setting at its default but the IdP's endpoints."""
    return start_stack(procs)
