"""Test harness: starts the processes the integration tests need and walks the IdP's pages.

procs     free ports, a group of child processes (ready lines, logs, stop by PID)
idp       the OpenID Provider in tests/idp/ and a scripted user logging in and out
upstream  the echo upstream and the faulty IdP in tests/upstream/
demo_api  the demo's API and SPA server (demo/api.py), the browser test's upstream
forger    the forging OpenID Provider (tests/upstream/forging_idp.py) and a login through it
envoy     a real Envoy with the filter, and a browser that keeps cookies
lb        a plain Envoy load balancer in front of several BFF Envoys
etcd      a real etcd cluster on loopback (the replicas' store), its client, its Envoy cluster
registry  a real container registry on loopback (the module's OCI image), and skopeo
stack     one deployment: the echo upstream, the IdP and Envoy wired to each other
jws       compact JWS by hand: decode, JWK -> public key, verify (RS256, PS256, ES256, EdDSA)

The values every part shares are defined here, once.
"""

import re

# The client the filter is registered as at every test IdP.
CLIENT_ID = "bff"
# Characters RFC 6749 §2.3.1 form-encoding changes (':' '/' '%' '+' and a space, which becomes
# '+'), and "bff:<secret>" encoded needs base64 padding ("=="): a login only works if the filter
# and the IdPs encode and decode client_secret_basic exactly right.
CLIENT_SECRET = "s3cr:t/with %chars+"
# The filter's session cookie; a big session adds chunks `<name>.1`, `.2`, ..., a login in
# progress a transaction cookie `<name>.tx.<flow id>`.
SESSION = "__Host-bff-session"

# A compact JWS or JWE as it would appear if leaked: a base64url JSON header ("eyJ"), a dot, the
# next part. Not just "eyJ", which random base64url (a sealed cookie, a random id) holds by
# chance about once in 260,000 characters: the test of a 1 KB cookie failed one run in 240.
JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
