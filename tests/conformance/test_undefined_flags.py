"""Undefined status flags never compare: the model (``tests.flags``), the harness's mask, and the corpus audit.

- The model: which flags each kind of instruction leaves undefined, for the counts and widths
  that matter.
- The harness: two outcomes that differ only in a flag the case declares undefined agree, on
  every comparison (against the expectation, between backends, in a pushed frame); a difference
  in a defined flag, or in a place the case declares nothing for, still fails.
- The audit: every corpus guest's listing is classified by the model instruction by instruction,
  and the flags a case declares undefined at the end are those the model leaves undefined after
  its listing.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.conformance.cases import CORPUS
from tests.conformance.cases_events import WINDOW_AFTER_SHADOW, words
from tests.conformance.harness import Case, Outcome, Run, check_alike, check_expected, compare, hlt, mask_undefined
from tests.conformance.listings import listing
from tests.flags import AF, CF, OF, PF, SF, STATUS, ZF, describe, parse, undefined_after, undefined_by

BY_NAME = {case.name: case for case in CORPUS}

# --- the model ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instructions", "undefined"),
    [
        (("shr rax, 32",), AF | OF),
        (("shr rax, 1",), AF),
        (("shl eax, 0x20",), 0),  # the count is masked to 5 bits: 0, no flag changes
        (("shr al, 8",), AF | OF | CF),  # shl / shr by the width or more: CF too
        (("sar al, 8",), AF | OF),  # but sar's CF is the sign (SDM, APM)
        (("shl al, cl",), AF | OF | CF),  # any count
        (("shr eax, cl",), AF | OF),
        (("ror rax, 32",), OF),
        (("rol eax, 1",), 0),
        (("rcl al, 9",), OF),  # 9 mod 9: CF stays as it was
        (("xor ax, ax",), AF),
        (("or eax, 0x80000000",), AF),
        (("test bx, bx",), AF),
        (("imul rax, rcx",), SF | ZF | AF | PF),
        (("mul ecx",), SF | ZF | AF | PF),
        (("div cx",), STATUS),
        (("bsf eax, ecx",), STATUS & ~ZF),
        (("bt eax, 3",), OF | SF | AF | PF),
        (("shrd ax, bx, 17",), STATUS),  # a count beyond the width
        (("shld eax, ebx, 4",), AF | OF),
        (("add al, 1",), 0),
        (("lock cmpxchg8b qword ptr [edi]",), 0),
        (("xor ax, ax", "cmp ax, 1"), 0),  # a later writer defines them again
        (("shr rax, 32", "inc rax"), 0),
        (("imul rax, rcx", "inc rax"), 0),
        (("shr rax, 32", "mov eax, 1", "out 0x30, eax"), AF | OF),
        (("xor cx, cx", "clc"), AF),
    ],
)
def test_the_model(instructions: tuple[str, ...], undefined: int) -> None:
    assert undefined_after(*instructions) == undefined, describe(undefined_after(*instructions))


def test_the_model_knows_every_instruction_it_is_asked_about() -> None:
    with pytest.raises(KeyError):
        undefined_after("frobnicate eax, 1")
    with pytest.raises(ValueError, match="width"):
        undefined_by("shl", 0, 3)  # a shift needs its width
    assert parse("sar byte ptr [rip+0xcefd5], cl  # 0xd0008") == ("sar", 8, None)
    assert parse("rep stosq") == ("stosq", 0, 1)
    assert undefined_after("mov eax, 1", before=AF) == AF
    assert undefined_after("add eax, 1", before=AF) == 0


# --- the harness masks them everywhere ---------------------------------------------------------------------

SYNTHETIC = Case(
    "synthetic_undefined_flags",
    "a guest that left AF and OF undefined, and pushed a frame (IP, CS, FLAGS) with AF undefined",
    "real",
    b"\xf4",
    memory={"frame": (0x7FFA, 6)},
    vcpus=2,
    expect=Outcome(
        steps=(hlt(0x1001),),
        state={"rflags": 0x3, "1:rflags": 0x2},
        memory={"frame": words(0x1000, 0, 0x246, size=2)},
    ),
    undefined_flags={"rflags": AF | OF, ("frame", 4): AF},
)


def _with(case: Case, *, rflags: int | None = None, flags_pushed: int | None = None, key: str = "rflags") -> Outcome:
    """The case's expectation with another RFLAGS at ``key`` or another FLAGS word in the frame."""
    outcome = case.expect
    if rflags is not None:
        outcome = replace(outcome, state={**outcome.state, key: rflags})
    if flags_pushed is not None:
        frame = outcome.memory["frame"]
        outcome = replace(outcome, memory={**outcome.memory, "frame": frame[:4] + flags_pushed.to_bytes(2, "little")})
    return outcome


def _problems(case: Case, first: Outcome, second: Outcome) -> list[str]:
    """Every check the corpus makes: each run against the expectation, and the two runs against each other."""
    kvm, sim = Run("kvm", (), first), Run("sim", (), second)
    return check_expected(case, kvm) + check_expected(case, sim) + check_alike(case, kvm, sim)


@pytest.mark.parametrize("flag", [AF, OF, AF | OF])
def test_outcomes_that_differ_in_an_undefined_flag_agree(flag: int) -> None:
    assert _problems(SYNTHETIC, _with(SYNTHETIC, rflags=0x3 | flag), SYNTHETIC.expect) == []
    assert _problems(SYNTHETIC, _with(SYNTHETIC, flags_pushed=0x246 | AF), SYNTHETIC.expect) == []


@pytest.mark.parametrize("flag", [CF, PF, ZF, SF])
def test_outcomes_that_differ_in_a_defined_flag_do_not(flag: int) -> None:
    problems = _problems(SYNTHETIC, _with(SYNTHETIC, rflags=0x3 ^ flag), SYNTHETIC.expect)
    shown = f"{0x3 ^ flag:#x}"
    assert f"[kvm] state rflags: expected 0x3, seen {shown}" in problems
    assert f"[kvm vs sim] state rflags: kvm {shown}, sim 0x3" in problems
    assert "(undefined, not compared: rflags AF OF; frame+0x4 AF)" in problems[-1]
    assert not _problems(SYNTHETIC, SYNTHETIC.expect, SYNTHETIC.expect)


def test_a_mask_holds_only_where_it_is_declared() -> None:
    assert _problems(SYNTHETIC, _with(SYNTHETIC, flags_pushed=0x246 | OF), SYNTHETIC.expect)  # AF only in the frame
    assert _problems(SYNTHETIC, _with(SYNTHETIC, rflags=0x2 | AF, key="1:rflags"), SYNTHETIC.expect)  # vCPU 1: none
    assert _problems(SYNTHETIC, _with(SYNTHETIC, flags_pushed=0x206), SYNTHETIC.expect)  # ZF is defined
    unmasked = replace(SYNTHETIC, undefined_flags={})
    assert _problems(unmasked, _with(unmasked, rflags=0x3 | AF), unmasked.expect)


def test_masking_changes_only_the_declared_bits() -> None:
    seen = Outcome(SYNTHETIC.expect.steps, {"rflags": 0xFFF, "1:rflags": 0xFFF}, {"frame": words(1, 0, 0xFFFF, size=2)})
    masked = mask_undefined(SYNTHETIC, seen)
    assert masked.state == {"rflags": 0xFFF & ~(AF | OF), "1:rflags": 0xFFF}
    assert masked.memory["frame"] == words(1, 0, 0xFFFF & ~AF, size=2)
    assert mask_undefined(SYNTHETIC, masked) == masked  # idempotent, like the quirk effects


def test_the_failures_seen_on_intel_now_agree() -> None:
    """long_mmio_rw: rflags 0x13 here (AMD), 0x3 on Intel; long_io_sizes: kvm 0x802, sim 0x2 on Intel."""
    mmio = BY_NAME["long_mmio_rw"]
    compare(mmio, {"kvm": Run("kvm", (), _with(mmio, rflags=0x13)), "sim": Run("sim", (), _with(mmio, rflags=0x3))})
    io = BY_NAME["long_io_sizes"]
    kvm, sim = Run("kvm", (), _with(io, rflags=0x802)), Run("sim", (), _with(io, rflags=0x2))
    assert check_alike(io, kvm, sim) == []
    assert check_alike(io, replace(kvm, outcome=_with(io, rflags=0x803)), sim)  # CF is defined after `ror`


# --- the corpus: every guest's listing, through the model ------------------------------------------------

LISTING_EXCEPTIONS: dict[str, tuple[str, str]] = {
    "real_divide_error_triple_fault": ("div cx", "faults (#DE) before it writes a flag"),
}
"""Cases whose listing, in order, is not what runs up to the comparison: the instruction to leave out, and why."""


def _vcpu_keys(case: Case) -> list[str]:
    return ["rflags", *(f"{i}:rflags" for i in range(1, case.vcpus))]


@pytest.mark.parametrize("case", [*CORPUS, WINDOW_AFTER_SHADOW], ids=lambda c: c.name)
def test_declared_flags_follow_the_listing(case: Case) -> None:
    lines = listing(case.code)
    assert lines is not None, f"{case.name}: no listing (one instruction per line, source in a comment) has its code"
    left_out = LISTING_EXCEPTIONS.get(case.name, ("", ""))[0]
    texts = [line.text for line in lines if line.text is not None and line.text != left_out]
    assert len(texts) < sum(line.text is not None for line in lines) or not left_out, f"{left_out!r} is not listed"
    undefined = undefined_after(*texts)  # raises for an instruction the model does not classify
    for key in _vcpu_keys(case):
        declared = case.undefined_flags.get(key, 0)
        assert declared == undefined, (
            f"{case.name}: {key} declared undefined {describe(declared)}; after its listing the model says "
            f"{describe(undefined)} (declare undefined_flags={{{key!r}: undefined_after(...)}}, "
            "or list the case in LISTING_EXCEPTIONS with the reason)"
        )
    if undefined and "frame" in case.memory:  # a pushed frame holds the flags too
        framed = any(where[0] == "frame" for where in case.undefined_flags if isinstance(where, tuple))
        assert framed, f"{case.name}: flags are undefined and it snapshots a frame: mask its FLAGS image too"


def test_the_exceptions_name_corpus_cases() -> None:
    assert set(LISTING_EXCEPTIONS) <= set(BY_NAME)

