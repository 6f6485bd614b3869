#!/usr/bin/env python3
"""Drops the proxy-wasm callbacks envoy-bff does not implement from a module's exports.

The Rust SDK exports every `proxy_on_*` callback, and Envoy calls each exported one on every
request (on_log, on_done, on_response_body per chunk, ...), each a round trip into the VM that
only returns the default. Without the export Envoy skips the call and takes the ABI's default
(continue, done). The functions stay in the module; only their export entries go.

    scripts/strip_exports.py MODULE.wasm     rewrites MODULE.wasm in place (idempotent)

Fails, leaving the file as it was, if the module is not wasm or lacks a callback envoy-bff needs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

# What envoy-bff's contexts implement (src/filter/root.rs, src/filter/http.rs), plus what the
# host needs to start the module and hand it memory.
KEEP = (
    "_initialize",
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_context_create",
    "proxy_on_tick",
    "proxy_on_queue_ready",
    "proxy_on_request_headers",
    # The back-channel logout reads its form body; a request without a body never calls it.
    "proxy_on_request_body",
    "proxy_on_response_headers",
    "proxy_on_http_call_response",
    "proxy_on_delete",
)
EXPORT_SECTION = 7
FUNCTION = 0
MAGIC = b"\0asm\x01\0\0\0"


def read_leb(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 35:
            raise ValueError("truncated or overlong LEB128 number")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def sections(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(section id, its start, its body's start, its end) for each section of a module."""
    if not data.startswith(MAGIC):
        raise ValueError("not a wasm module (version 1)")
    at = len(MAGIC)
    while at < len(data):
        size, body_at = read_leb(data, at + 1)
        end = body_at + size
        if end > len(data):
            raise ValueError("a section runs past the end of the module")
        yield data[at], at, body_at, end
        at = end


def exports(body: bytes) -> Iterator[tuple[str, int, bytes]]:
    """(name, kind, the entry's bytes) for each entry of an export section's body."""
    count, at = read_leb(body, 0)
    for _ in range(count):
        start = at
        length, at = read_leb(body, at)
        name = body[at:at + length].decode("utf-8")
        at += length
        kind = body[at]
        _, at = read_leb(body, at + 1)
        yield name, kind, body[start:at]
    if at != len(body):
        raise ValueError("the export section has trailing bytes")


def kept_exports(body: bytes) -> tuple[bytes, list[str], list[str]]:
    """The export section's body with only non-function exports and KEEP's functions."""
    entries, kept, dropped = [], [], []
    for name, kind, entry in exports(body):
        if kind != FUNCTION or name in KEEP:
            entries.append(entry)
            kept.append(name)
        else:
            dropped.append(name)
    return leb(len(entries)) + b"".join(entries), kept, dropped


def strip(data: bytes) -> tuple[bytes, list[str]]:
    out = bytearray(MAGIC)
    seen_exports = False
    dropped: list[str] = []
    for section, start, body_at, end in sections(data):
        if section == EXPORT_SECTION:
            seen_exports = True
            body, kept, dropped = kept_exports(data[body_at:end])
            missing = [name for name in KEEP if name not in kept]
            if missing:
                raise ValueError(f"the module does not export {', '.join(missing)}")
            out += bytes([section]) + leb(len(body)) + body
        else:
            out += data[start:end]
    if not seen_exports:
        raise ValueError("the module has no export section")
    return bytes(out), dropped


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    path = Path(argv[1])
    try:
        stripped, dropped = strip(path.read_bytes())
    except (OSError, ValueError) as e:
        print(f"strip_exports: {path}: {e}", file=sys.stderr)
        return 1
    if dropped:
        tmp = path.with_suffix(".wasm.tmp")
        tmp.write_bytes(stripped)
        tmp.replace(path)
        print(f"strip_exports: {path}: dropped {len(dropped)} unused exports")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
