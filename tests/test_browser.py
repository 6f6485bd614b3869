"""A person uses the demo SPA in a real browser: headless Chromium (Debian's) walks demo/app/
through Envoy with the filter: signed out, Get Data fails; Login at the IdP; the page says who is
signed in and Get Data shows the API's answer, which got the token and the user's claims; page
scripts see no token anywhere; the Sensitive Action goes through a step-up login and back;
Logout at the IdP; Get Data fails again.

tests/browser/walk.mjs does the walking (playwright-core) and reports each step; each step is
one test here. Screenshots and results.json stay in tests/artifacts/browser/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness.demo_api import start_demo_api
from harness.envoy import discovery_only
from harness.idp import DEFAULT_PASSWORD, DEFAULT_USER
from harness.procs import ARTIFACTS, REPO
from harness.stack import start_stack

CHROMIUM = Path("/usr/bin/chromium")
WALK = REPO / "tests" / "browser" / "walk.mjs"
SCREENSHOTS = ARTIFACTS / "browser"
WALK_TIMEOUT_S = 180

# walk.mjs's steps, in order.
STEPS = (
    "open_app",
    "get_data_signed_out",
    "login",
    "signed_in_shown",
    "get_data_signed_in",
    "claim_headers",
    "no_token_visible_to_scripts",
    "sensitive_step_up",
    "csrf_header_required",
    "logout",
    "get_data_after_logout",
    "no_token_in_any_response",
    "stayed_on_loopback",
)


def require_browser() -> None:
    """Chromium is installed by scripts/setup; only a developer machine without it may skip."""
    missing = [what for what, ok in (
        (str(CHROMIUM), CHROMIUM.exists()),
        ("node", shutil.which("node") is not None),
        ("node_modules/playwright-core", (REPO / "node_modules" / "playwright-core").is_dir()),
    ) if not ok]
    if not missing:
        return
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip(f"{CHROMIUM} is not installed (scripts/setup installs it); "
                    "in CI this test runs")
    pytest.fail(f"the browser test needs {', '.join(missing)}: run scripts/setup")


@pytest.fixture(scope="module")
def walk(procs) -> dict:
    """Start the IdP, the demo API and Envoy, walk the SPA once, return walk.mjs's results."""
    require_browser()
    # The app is reached as http://localhost:<port>, as in the demo: the callback and the
    # post-logout URL the IdP accepts must name that host. The endpoints come from discovery,
    # as the shipped config does (filter_config names /auth and /token).
    envoy = start_stack(procs, discovery_only, upstream_port=start_demo_api(procs), host="localhost",
                        claim_headers={"sub": "x-user-sub", "email": "x-user-email"},
                        rules=[{"prefix": "/private/api/sensitive", "acr": ["urn:example:mfa"]}]).envoy
    app = f"http://localhost:{envoy.port}"

    started = time.monotonic()
    proc = procs.start("walk", ["node", WALK, "--app", f"{app}/", "--user", DEFAULT_USER,
                                "--password", DEFAULT_PASSWORD, "--artifacts", SCREENSHOTS])
    try:
        proc.popen.wait(timeout=WALK_TIMEOUT_S)
    except subprocess.TimeoutExpired:  # a hung browser: SIGTERM makes playwright close it
        proc.stop()
        pytest.fail(f"walk.mjs did not finish within {WALK_TIMEOUT_S}s:\n{proc.output()}")
    proc.stop()  # already exited: collects its output
    lines = [line for line in proc.output().splitlines() if line.startswith("{")]
    if not lines:
        pytest.fail(f"walk.mjs printed no results (exit {proc.popen.returncode}):\n{proc.output()}")
    results = json.loads(lines[-1])
    if "steps" not in results:
        pytest.fail(f"walk.mjs could not walk: {results.get('error')}\n{proc.output()}")
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["envoy"] = envoy
    return results


def step(results: dict, name: str) -> dict:
    return next(s for s in results["steps"] if s["name"] == name)


def test_the_walk_has_the_steps_this_test_knows(walk):
    assert [s["name"] for s in walk["steps"]] == list(STEPS)
    print(f"walk took {walk['elapsed_s']}s in Chromium {walk['browser']}; "
          f"screenshots in {SCREENSHOTS.relative_to(REPO)}")


@pytest.mark.parametrize("name", STEPS)
def test_step(walk, name):
    s = step(walk, name)
    assert s["status"] == "pass", f"{name}: {s['status']}: {s['detail']} (see {s['screenshot']})"


def test_the_page_names_the_user_from_her_claims(walk):
    s = step(walk, "signed_in_shown")
    if s["status"] != "pass":
        pytest.fail(f"signed_in_shown did not pass: {s['detail']}")
    assert s["detail"] == "#who: Signed in as Alice Liddell (alice@example.test)"


def test_the_api_saw_alice_through_the_claim_headers(walk):
    s = step(walk, "claim_headers")
    if s["status"] != "pass":
        pytest.fail(f"claim_headers did not pass: {s['detail']}")
    assert s["detail"] == "x-user-sub: alice-sub-0001, x-user-email: alice@example.test"


def test_envoy_stayed_healthy(walk):
    walk["envoy"].assert_vm_healthy()
