"""Test harness: starts the processes the integration tests need and walks the IdP's pages.

procs     free ports, a group of child processes (ready lines, logs, stop by PID)
idp       the OpenID Provider in tests/idp/ and a scripted user logging in and out
upstream  the echo upstream in tests/upstream/
demo_api  the demo's API and SPA server (demo/api.py), the browser test's upstream
forger    the forging OpenID Provider (tests/upstream/forging_idp.py) and a login through it
jws       compact JWS by hand: decode, JWK -> public key, verify (RS256, PS256, ES256, EdDSA)
"""
