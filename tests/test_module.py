"""The module the tests load is the one scripts/build-wasm makes: only the callbacks envoy-bff
implements are exported (scripts/strip_exports.py), and the stripper refuses what it must not
touch."""

from __future__ import annotations

import importlib.util

import pytest

from harness.envoy import WASM
from harness.procs import REPO

spec = importlib.util.spec_from_file_location("strip_exports", REPO / "scripts" / "strip_exports.py")
strip_exports = importlib.util.module_from_spec(spec)
spec.loader.exec_module(strip_exports)


def exports(module: bytes) -> list[str]:
    return [
        name
        for section, _, body, end in strip_exports.sections(module)
        if section == strip_exports.EXPORT_SECTION
        for name, _, _ in strip_exports.exports(module[body:end])
    ]


@pytest.fixture(scope="module")
def module() -> bytes:
    if not WASM.exists():
        pytest.fail(f"{WASM} is missing: build it with scripts/build-wasm")
    return WASM.read_bytes()


def test_the_built_module_exports_only_what_the_filter_implements(module):
    assert sorted(exports(module)) == sorted(["memory", *strip_exports.KEEP])


def test_stripping_is_idempotent_and_keeps_everything_else(module):
    again, dropped = strip_exports.strip(module)
    assert dropped == [] and again == module


def test_the_stripper_drops_unused_callbacks_and_refuses_bad_input(module):
    # A module as cargo builds it: one more exported callback (an alias of a kept function).
    (export_start, body_at, end), = [
        (start, body, end)
        for section, start, body, end in strip_exports.sections(module)
        if section == strip_exports.EXPORT_SECTION
    ]
    count, first = strip_exports.read_leb(module, body_at)
    extra = strip_exports.leb(len(b"proxy_on_log")) + b"proxy_on_log" + b"\x00" + strip_exports.leb(0)
    section = strip_exports.leb(count + 1) + module[first:end] + extra
    unstripped = module[:export_start] + b"\x07" + strip_exports.leb(len(section)) + section + module[end:]
    assert "proxy_on_log" in exports(unstripped)

    stripped, dropped = strip_exports.strip(unstripped)
    assert dropped == ["proxy_on_log"] and stripped == module

    with pytest.raises(ValueError, match="not a wasm module"):
        strip_exports.strip(b"#!/bin/sh\n")
    without_ticks = unstripped.replace(b"proxy_on_tick", b"proxy_on_tock")
    with pytest.raises(ValueError, match="does not export proxy_on_tick"):
        strip_exports.strip(without_ticks)
