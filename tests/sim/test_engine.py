"""Simulator internals: Unicorn calibration, hflags, state round trips, memory-layout maths."""

from __future__ import annotations

from dataclasses import replace

import pytest

import hvcore
from hvcore import GuestMemory, MemorySlot, Segment, SlotFlags, x86
from hvcore_sim import engine as engine_module
from hvcore_sim import layout as layout_module
from hvcore_sim import system
from hvcore_sim.engine import HF_ADDSEG, HF_CS32, HF_CS64, HF_LMA, HF_PE, HF_SS32, Engine, compute_hflags
from hvcore_sim.memory import PHYSICAL_LIMIT, DirtyLog, _gaps

pytestmark = pytest.mark.skipif(
    system._unicorn_problem() is not None, reason=f"simulator unusable: {system._unicorn_problem()}"
)


@pytest.fixture
def engine() -> Engine:
    e = Engine(layout_module.calibrate())
    e.reset()
    return e


def test_calibration_finds_qemu_5_layout() -> None:
    lay = layout_module.calibrate()
    assert lay.eip - lay.env == 128
    assert lay.segment(1) - lay.segment(0) == 24
    assert lay.cr > lay.idt > lay.gdt > lay.tr > lay.ldt > lay.segs
    assert lay.count == lay.counter + 8


def test_a_failed_calibration_refuses_to_run_naming_the_unicorn_version(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> layout_module.ContextLayout:
        raise layout_module.LayoutError("RAX: expected one place holding 0x1122334455667788, found 0")

    monkeypatch.setattr(system, "calibrate", broken)
    reason = system.BACKEND.unavailable_reason()
    assert reason is not None
    assert "unicorn 2.1" in reason
    assert "RAX" in reason
    with pytest.raises(hvcore.BackendUnavailable, match="internals are not laid out as expected"):
        system.SimHypervisor()


def test_an_uncalibrated_unicorn_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    unicorn = pytest.importorskip("unicorn")
    monkeypatch.delenv("HVCORE_UNICORN_UNPINNED", raising=False)
    monkeypatch.setattr(unicorn, "__version__", "2.1.5")
    assert system.BACKEND.unavailable_reason() == (
        "unicorn 2.1.5 is not one the simulator was calibrated against (2.1.4); pip install 'unicorn==2.1.4'"
    )


def test_an_uncalibrated_unicorn_may_be_tried_but_still_calibrates(monkeypatch: pytest.MonkeyPatch) -> None:
    unicorn = pytest.importorskip("unicorn")
    monkeypatch.setenv("HVCORE_UNICORN_UNPINNED", "1")
    monkeypatch.setattr(unicorn, "__version__", "2.1.5")
    assert system.BACKEND.unavailable_reason() is None  # the real 2.1.4 structures calibrate
    monkeypatch.setattr(system, "calibrate", lambda: (_ for _ in ()).throw(layout_module.LayoutError("moved")))
    assert system.BACKEND.unavailable_reason() == "unicorn 2.1.5's internals are not laid out as expected: moved"


def test_hflags_follow_the_mode(engine: Engine) -> None:
    reset = engine.get_sregs(apic_base=0, interrupt_bitmap=(0, 0, 0, 0), cr8=0)
    real = x86.real_mode_sregs(reset)
    assert compute_hflags(real, 0) & (HF_PE | HF_CS32 | HF_LMA) == 0
    assert compute_hflags(real, 0) & HF_ADDSEG
    with GuestMemory(0x10000) as ram:
        flat32 = x86.protected_mode_sregs(reset, ram, 0x500)
        assert compute_hflags(flat32, 0) & (HF_PE | HF_CS32 | HF_SS32 | HF_ADDSEG) == HF_PE | HF_CS32 | HF_SS32
        long64 = x86.long_mode_sregs(reset, ram, 0x500, 0x1000)
        assert compute_hflags(long64, 0) & (HF_LMA | HF_CS64) == HF_LMA | HF_CS64
        user = x86.long_mode_sregs(reset, ram, 0x500, 0x1000, user=True)
        assert compute_hflags(user, 0) & 3 == 3  # CPL from SS.DPL, as QEMU keeps it


def test_sregs_round_trip_through_the_context_blob(engine: Engine) -> None:
    reset = engine.get_sregs(apic_base=0xFEE00900, interrupt_bitmap=(0, 0, 0, 0), cr8=0)
    assert (reset.cs.selector, reset.cs.base, reset.cr0) == (0xF000, 0xFFFF0000, 0x60000010)
    odd = Segment(base=0x12345000, limit=0xFFFFF, selector=0x2B, type=0xB, present=1, dpl=3, db=0, s=1, l=1, g=1)
    wanted = replace(reset, cs=odd, cr3=0x9000, cr4=0x20, efer=0x500, cr2=0xDEAD)
    engine.set_sregs(wanted)
    got = engine.get_sregs(apic_base=0xFEE00900, interrupt_bitmap=(0, 0, 0, 0), cr8=0)
    assert (got.cs, got.cr3, got.cr4, got.efer, got.cr2) == (odd, 0x9000, 0x20, 0x500, 0xDEAD)


def test_segment_flags_match_the_descriptor_attribute_bits() -> None:
    seg = x86.flat_segment(0x10, code=True, bits=64, dpl=3)
    flags = engine_module.segment_flags(seg)
    assert flags == (x86.descriptor(seg) >> 32) & 0x00F0FF00


def test_gaps_cover_everything_outside_the_slots() -> None:
    with GuestMemory(0x20000) as a, GuestMemory(0x10000) as b:
        slots = [MemorySlot(0, 0, 0x20000, a), MemorySlot(1, 0xFFFF0000, 0x10000, b, flags=SlotFlags.READONLY)]
        taken = [(s.guest_address, s.end) for s in slots]
        assert _gaps(taken) == [(0x20000, 0xFFFF0000 - 0x20000), (1 << 32, PHYSICAL_LIMIT - (1 << 32))]
        assert _gaps([]) == [(0, PHYSICAL_LIMIT)]
        lapic = (0xFEE00000, 0xFEE01000)  # a device page carved out of a gap
        assert _gaps([*taken, lapic])[1:3] == [
            (0xFEE01000, 0xFFFF0000 - 0xFEE01000),
            (1 << 32, PHYSICAL_LIMIT - (1 << 32)),
        ]


def test_dirty_log_bitmap_is_kvm_shaped_and_clears() -> None:
    log = DirtyLog()
    for page in (0, 3, 64, 65):
        log.record(7, page)
    bitmap = log.take(7, 70)
    assert len(bitmap) == 16  # two 64-bit words for 70 pages
    assert int.from_bytes(bitmap, "little") == 1 | 1 << 3 | 1 << 64 | 1 << 65
    assert log.take(7, 70) == bytes(16)
