"""Variant (h) of bench/run: what one ID-token signature check costs in V8, per algorithm.

`bench/sigcheck` is the filter's own check (`jws::verify`: the header, base64, the hash, the
signature) in a wasm32-wasip1 command, run by Node (V8, the engine Envoy runs the filter in)
under callgrind: the instructions of N checks minus those of none, divided by N (about 50 s of callgrind per run: 13 runs per build with the
defaults). Node runs with
`--no-liftoff --no-wasm-lazy-compilation`, so the whole module is compiled by TurboFan before
`main` in both runs and V8's background tier-up (which otherwise lands at a random point of the
loop) cancels out. The tokens are signed here with the test keys (tests/fixtures/keys) by
Python's `cryptography`; the check verifies each once outside the count.

With `before` (a checkout of the repository, e.g. a `git worktree` of the last commit), the same
crate is also built against that checkout's filter: the change's cost per check, in one run.

    .venv/bin/python bench/signatures.py [--before DIR] [--checks 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))

from harness.jws import b64url_encode as b64  # noqa: E402
CRATE = BENCH / "sigcheck"
KEYS = REPO / "tests" / "fixtures" / "keys"
WORK = BENCH / ".work" / "sigcheck"
ALGS = ("RS256", "PS256", "ES256", "EdDSA")
NODE_FLAGS = ("--disable-warning=ExperimentalWarning", "--no-liftoff", "--no-wasm-lazy-compilation")


def token_and_jwks(alg: str) -> tuple[str, str]:
    """A token shaped like an ID token (~0.5 KB of claims) signed with `alg`, and the JWKS."""
    pem = {"RS256": "rsa-2048.pem", "PS256": "rsa-2048.pem", "ES256": "ec-p256.pem",
           "EdDSA": "ed25519.pem"}[alg]
    key = serialization.load_pem_private_key((KEYS / pem).read_bytes(), None)
    header = b64(json.dumps({"alg": alg, "kid": "k", "typ": "JWT"}).encode())
    claims = {"iss": "http://127.0.0.1:9000", "sub": "alice-sub-0001", "aud": "bff",
              "exp": 4102444800, "iat": 1800000000, "nonce": "n" * 43, "at_hash": "h" * 22,
              "sid": "s" * 36, "auth_time": 1800000000, "acr": "urn:example:pwd",
              "email": "alice@example.com", "email_verified": True, "name": "Alice Liddell",
              "preferred_username": "alice", "groups": ["readers", "writers"]}
    payload = b64(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    if isinstance(key, rsa.RSAPrivateKey):
        pad = (padding.PKCS1v15() if alg == "RS256" else
               padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32))
        signature = key.sign(signing_input, pad, hashes.SHA256())
        n = key.public_key().public_numbers()
        jwk = {"kty": "RSA", "n": b64(n.n.to_bytes(256, "big")), "e": b64(n.e.to_bytes(3, "big"))}
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        p = key.public_key().public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": b64(p.x.to_bytes(32, "big")),
               "y": b64(p.y.to_bytes(32, "big"))}
    else:
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        signature = key.sign(signing_input)
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
    jwk["kid"] = "k"
    return f"{header}.{payload}.{b64(signature)}", json.dumps({"keys": [jwk]})


def build(checkout: Path, name: str) -> Path:
    """bench/sigcheck built against `checkout`'s filter crate; the module's path."""
    crate = WORK / f"crate-{name}"
    shutil.rmtree(crate, ignore_errors=True)
    shutil.copytree(CRATE, crate, ignore=shutil.ignore_patterns("target"))
    manifest = crate / "Cargo.toml"
    manifest.write_text(manifest.read_text().replace('path = "../.."', f'path = "{checkout}"'))
    target = WORK / f"target-{name}"
    subprocess.run(["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip1",
                    "--manifest-path", str(manifest), "--target-dir", str(target)],
                   check=True, cwd=crate)
    return target / "wasm32-wasip1" / "release" / "sigcheck.wasm"


def instructions(module: Path, alg: str, checks: int, token: str, jwks: str) -> int:
    """callgrind's instruction count of one Node process running `checks` checks."""
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", "node", *NODE_FLAGS,
         str(CRATE / "run.mjs"), str(module), alg, str(checks), token, jwks],
        capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"sigcheck {alg} {checks} failed: {result.stderr[-2000:]}")
    found = re.search(r"Collected : (\d+)", result.stderr)
    if not found:
        raise RuntimeError(f"no callgrind total in: {result.stderr[-2000:]}")
    return int(found.group(1))


def per_check(module: Path, checks: int, repeats: int, log=print) -> dict:
    """Instructions per check for each algorithm: (median of `repeats` runs of `checks` checks
    minus the median of `repeats` runs of none) / `checks`. The runs of none (Node's start, the
    module's compilation, one check outside the count) are the same for every algorithm within
    a fraction of a percent, so they are run once, with the first algorithm's token."""
    token, jwks = token_and_jwks(ALGS[0])
    none = [instructions(module, ALGS[0], 0, token, jwks) for _ in range(repeats)]
    out = {"baseline_runs": none}
    for alg in ALGS:
        token, jwks = token_and_jwks(alg)
        some = [instructions(module, alg, checks, token, jwks) for _ in range(repeats)]
        value = (statistics.median(some) - statistics.median(none)) / checks
        spread = (max(some) - min(some)) / checks
        out[alg] = {"instructions": round(value), "spread": round(spread), "runs": some}
        log(f"(h) {alg}: {value:,.0f} instructions per check (runs spread {spread:,.0f})")
    return out


def measure(checks: int = 100, repeats: int = 3, before: Path | None = None, log=print) -> dict:
    """(h) for the working tree's filter, and for `before`'s when given."""
    WORK.mkdir(parents=True, exist_ok=True)
    report = {"checks": checks, "repeats": repeats, "node_flags": list(NODE_FLAGS),
              "now": per_check(build(REPO, "now"), checks, repeats, log)}
    if before is not None:
        report["before"] = per_check(build(before.resolve(), "before"), checks, repeats, log)
        report["before_checkout"] = str(before)
    return report


def print_table(report: dict) -> None:
    before = report.get("before")
    print()
    print(f"(h) one ID-token signature check in V8 (jws::verify, instructions per check under "
          f"callgrind; {report['checks']} checks minus none, median of {report['repeats']})")
    head = f"   {'alg':6} {'now':>12}" + (f" {'before':>12} {'now/before':>10}" if before else "")
    print(head)
    print("-" * len(head))
    for alg in ALGS:
        x = report["now"][alg]
        line = f"   {alg:6} {x['instructions']:12,}"
        if before:
            b = before[alg]["instructions"]
            line += f" {b:12,} {x['instructions'] / b:10.2f}"
        print(line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before", type=Path, help="a checkout to compare with")
    ap.add_argument("--out", type=Path, help="write the report as JSON here")
    args = ap.parse_args(argv)
    report = measure(args.checks, args.repeats, args.before)
    print_table(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
