"""One deployment as most tests run it: the echo upstream, the IdP and Envoy with the filter,
on free loopback ports and wired to each other. Tests with several Envoys or IdPs compose the
start_* functions of the other modules the same way."""

from __future__ import annotations

from dataclasses import dataclass

from .envoy import KEY_A, Envoy, filter_config, start_envoy
from .idp import Idp, start_idp
from .procs import ProcessGroup, free_port
from .upstream import start_echo


@dataclass
class Stack:
    idp: Idp
    envoy: Envoy
    echo_port: int


def start_stack(procs: ProcessGroup, config=filter_config, *, idp_env: dict | None = None,
                upstream_port: int | None = None, host: str = "127.0.0.1", name: str = "envoy",
                cookie_keys: str = KEY_A, access_logs: list[dict] = (), **overrides) -> Stack:
    """Start the stack; `config(idp.issuer, **overrides)` is the filter's configuration.

    The IdP (`idp_env`: its IDP_* variables) knows the app's callback and, for logout, its
    root, both at `host`: the name the browser uses for Envoy. `upstream_port` replaces the
    echo upstream with a server the caller started; `access_logs`: Envoy's access logs.
    """
    envoy_port = free_port()
    app = f"http://{host}:{envoy_port}"
    echo_port = upstream_port or start_echo(procs)
    idp = start_idp(procs, [f"{app}/private/callback"], post_logout_redirect_uris=[f"{app}/"],
                    env_overrides=idp_env)
    envoy = start_envoy(procs, config(idp.issuer, **overrides), echo_port, idp.port,
                        cookie_keys=cookie_keys, port=envoy_port, name=name,
                        access_logs=access_logs)
    return Stack(idp=idp, envoy=envoy, echo_port=echo_port)
