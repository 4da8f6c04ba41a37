"""The simulator's one x86 prefix scanner (hvcore_sim.decode.prefixes), which every intercept decoder uses."""

from __future__ import annotations

import pytest

from hvcore_sim.decode import FS, NO_SEGMENT, SS, prefixes


@pytest.mark.parametrize(
    ("code", "rex", "length", "legacy", "rex_byte", "segment"),
    [
        ("0f05", True, 0, set(), 0, NO_SEGMENT),
        ("", True, 0, set(), 0, NO_SEGMENT),
        ("f36c", True, 1, {0xF3}, 0, NO_SEGMENT),
        ("66480f20c0", True, 2, {0x66}, 0x48, NO_SEGMENT),
        ("48660f20c0", True, 2, {0x66}, 0, NO_SEGMENT),  # a legacy prefix after REX voids it
        ("4041f0", True, 3, {0xF0}, 0, NO_SEGMENT),
        ("36648b00", True, 2, {0x36, 0x64}, 0, FS),  # the last segment override counts
        ("36408b00", False, 1, {0x36}, 0, SS),  # outside 64-bit code 0x40 is INC
        ("666666", True, 3, {0x66}, 0, NO_SEGMENT),  # all prefixes: the length is the whole
    ],
)
def test_prefixes(code: str, rex: bool, length: int, legacy: set[int], rex_byte: int, segment: int) -> None:
    found = prefixes(bytes.fromhex(code), rex=rex)
    assert (found.length, set(found.legacy), found.rex, found.segment) == (length, legacy, rex_byte, segment)


def test_named_prefixes() -> None:
    found = prefixes(bytes.fromhex("f0f2676690"), rex=False)
    assert (found.lock, found.rep, found.address_override, found.operand16) == (True, True, True, True)
    assert not any((prefixes(b"\x90", rex=True).lock, prefixes(b"\x90", rex=True).rep))
