"""What decrypting one encrypted ID token costs in V8, per algorithm pair (issue 19).

`bench/jwecheck` is the filter's own decryption (`jwe::decrypt`: the header, base64, the key
management, the content decryption) in a wasm32-wasip1 command, run by Node (V8) under
callgrind exactly as bench/signatures.py runs its check: the instructions of N decryptions minus
those of none, divided by N. The tokens are tests/fixtures/jwe/vectors.json (made by panva's
jose, which oidc-provider encrypts with), to the test keys.

    .venv/bin/python bench/decryptions.py [--decryptions 10] [--only ECDH] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from signatures import instructions  # noqa: E402  (the same Node flags and callgrind run)

CRATE = BENCH / "jwecheck"
TARGET = BENCH / ".work" / "jwecheck-target"
KEYS = REPO / "tests" / "fixtures" / "keys"
VECTORS = REPO / "tests" / "fixtures" / "jwe" / "vectors.json"


def build() -> Path:
    subprocess.run(["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip1",
                    "--manifest-path", str(CRATE / "Cargo.toml"), "--target-dir", str(TARGET)],
                   check=True, cwd=CRATE)
    return TARGET / "wasm32-wasip1" / "release" / "jwecheck.wasm"


def measure(decryptions: int, only: str = "", log=print) -> dict:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    module = build()
    doc = json.loads(VECTORS.read_text())
    out = {"decryptions": decryptions, "pairs": []}
    for v in doc["vectors"]:
        if only and only not in v["alg"]:
            continue
        pem = (KEYS / v["key"]).read_text()
        # A baseline per pair: the run of none decrypts once outside the count, and an RSA
        # decryption costs a hundred times an ECDH one.
        baseline = instructions(module, v["kid"], 0, v["token"], pem)
        total = instructions(module, v["kid"], decryptions, v["token"], pem)
        per = round((total - baseline) / decryptions)
        out["pairs"].append({"alg": v["alg"], "enc": v["enc"], "instructions": per,
                             "runs": [baseline, total]})
        log(f"{v['alg']:>15} + {v['enc']:<14} {per:>13,} instructions per decryption")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decryptions", type=int, default=10)
    parser.add_argument("--only", default="", help="only the algs containing this, e.g. ECDH")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = measure(args.decryptions, args.only)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
