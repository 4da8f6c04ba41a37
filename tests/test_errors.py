"""Every misuse raises the right typed hvcore error, with a useful message and KVM's errno.

Each check asserts the *exact* class (not just a base class), a match on the part of
the message that tells the user what to fix, and the errno KVM reports for the same
mistake where there is one. A failed call must also leave the object as it was.

Tests that take ``hv`` or ``vm`` run on every registered backend (the simulator joins
when it is built); ``GuestMemory`` and registry tests need no backend at all.
"""

from __future__ import annotations

import errno
import pickle
import re
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

import hvcore
from hvcore import (
    PAGE_SIZE,
    VCPU,
    VM,
    CpuidEntry,
    GuestDebug,
    GuestMemory,
    Hypervisor,
    IoExit,
    IrqchipId,
    Lapic,
    MmioExit,
    MpState,
    Regs,
    SlotFlags,
    Xsave,
    errors,
    registry,
)
from hvcore.memory import MAX_GUEST_MEMORY
from tests.boot import boot
from tests.guests import real_mode
from tests.quirks import has_irqchip

SLOT_RAM = 0x10000
"""Size of the GuestMemory most slot tests map."""
HIGH = 0x100000
"""Guest-physical address of that mapping (away from the test guests' layout)."""
UNKNOWN_MSR = 0xDEADBEEF
"""An MSR index no x86 CPU and no KVM knows."""
SYSENTER_CS = 0x174
"""IA32_SYSENTER_CS: an MSR every KVM vCPU reads and writes freely."""


@contextmanager
def raises(
    cls: type[hvcore.HvError], match: str, code: int | None = None
) -> Iterator[pytest.ExceptionInfo[hvcore.HvError]]:
    """``pytest.raises(cls, match=match)``, then: exactly ``cls`` (no subclass, no sibling), and ``errno == code``."""
    with pytest.raises(cls, match=match) as info:
        yield info
    exc = info.value
    assert type(exc) is cls, f"expected exactly hvcore.{cls.__name__}, got {type(exc).__name__}: {exc}"
    assert isinstance(exc, hvcore.HvError)
    if code is not None:
        assert exc.errno == code, (
            f"{type(exc).__name__} has errno {exc.errno}, KVM reports {errno.errorcode[code]} ({code}): {exc}"
        )


def ram_slot(vm: VM, slot: int = 0, guest_address: int = HIGH, flags: SlotFlags = SlotFlags(0)) -> GuestMemory:
    """Map a fresh ``SLOT_RAM``-byte GuestMemory at ``guest_address`` (unmapped once the VM and the test drop it)."""
    memory = GuestMemory(SLOT_RAM)
    vm.set_memory_slot(slot, guest_address, memory, flags=flags)
    return memory


# -- memory slots ------------------------------------------------------------


@pytest.mark.parametrize("slot", [-1, 1 << 20, 1 << 40])
def test_slot_id_out_of_range(vm: VM, slot: int) -> None:
    with GuestMemory(SLOT_RAM) as ram, raises(hvcore.InvalidArgument, rf"slot id {slot} is out of range", errno.EINVAL):
        vm.set_memory_slot(slot, HIGH, ram)
    assert vm.memory_slots() == ()


def test_delete_slot_id_out_of_range(vm: VM) -> None:
    with raises(hvcore.InvalidArgument, r"slot id -1 is out of range", errno.EINVAL):
        vm.delete_memory_slot(-1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"guest_address": HIGH + 0x123}, r"guest address 0x100123 is not a multiple of the page size"),
        ({"guest_address": HIGH + 0x800}, r"guest address 0x100800 is not a multiple of the page size"),
        ({"guest_address": HIGH, "size": 0x1800}, r"slot size 0x1800 is not a multiple of the page size"),
        ({"guest_address": HIGH, "size": 0x1001}, r"slot size 0x1001 is not a multiple of the page size"),
        ({"guest_address": HIGH, "offset": 0x800, "size": 0x1000}, r"offset into guest memory 0x800 is not a multiple"),
        ({"guest_address": HIGH, "offset": 1, "size": 0x1000}, r"offset into guest memory 0x1 is not a multiple"),
    ],
    ids=["address-0x123", "address-half-page", "size-1.5-pages", "size-page+1", "offset-half-page", "offset-1"],
)
def test_slot_not_page_aligned(vm: VM, kwargs: dict[str, int], message: str) -> None:
    with GuestMemory(SLOT_RAM) as ram, raises(hvcore.AlignmentError, message, errno.EINVAL):
        vm.set_memory_slot(
            0, kwargs["guest_address"], ram, offset=kwargs.get("offset", 0), size=kwargs.get("size", SLOT_RAM)
        )
    assert vm.memory_slots() == ()


@pytest.mark.parametrize(
    ("guest_address", "size"),
    [
        (HIGH, SLOT_RAM),
        (HIGH + 0x8000, 0x1000),
        (HIGH - 0x1000, 0x2000),
        (HIGH + 0xF000, 0x2000),
        (HIGH - 0x1000, 0x12000),
    ],
    ids=["same-range", "inside", "straddles-start", "straddles-end", "covers"],
)
def test_overlapping_slots(vm: VM, guest_address: int, size: int) -> None:
    first = vm.set_memory_slot(0, HIGH, GuestMemory(SLOT_RAM))
    message = r"slot 1 at 0x[0-9a-f]+-0x[0-9a-f]+ overlaps slot 0 at 0x100000-0x110000; move or delete one"
    with GuestMemory(0x12000) as other, raises(hvcore.SlotOverlap, message, errno.EEXIST):
        vm.set_memory_slot(1, guest_address, other, size=size)
    assert vm.memory_slots() == (first,)


def test_moving_a_slot_onto_another(vm: VM) -> None:
    ram_slot(vm, 0, HIGH)
    moved = vm.set_memory_slot(1, 2 * HIGH, GuestMemory(SLOT_RAM))
    with raises(hvcore.SlotOverlap, r"overlaps slot 0", errno.EEXIST):
        vm.set_memory_slot(1, HIGH + 0x4000, moved.memory)
    assert vm.memory_slots()[1] == moved


@pytest.mark.parametrize(("offset", "size"), [(0, 2 * SLOT_RAM), (0x1000, SLOT_RAM), (SLOT_RAM, 0x1000)])
def test_slot_bigger_than_its_memory(vm: VM, offset: int, size: int) -> None:
    with GuestMemory(SLOT_RAM) as ram:
        pattern = rf"slot 0 wants {size:#x} bytes at offset {offset:#x} of a 0x10000-byte GuestMemory"
        with raises(hvcore.InvalidArgument, pattern, errno.EINVAL):
            vm.set_memory_slot(0, HIGH, ram, offset=offset, size=size)
    assert vm.memory_slots() == ()


def test_slot_negative_size(vm: VM) -> None:
    with GuestMemory(SLOT_RAM) as ram, raises(hvcore.InvalidArgument, r"must not be negative", errno.EINVAL):
        vm.set_memory_slot(0, HIGH, ram, size=-0x1000)


def test_slot_of_size_zero(vm: VM) -> None:
    with GuestMemory(SLOT_RAM) as ram, raises(hvcore.InvalidArgument, r"use delete_memory_slot\(\)", errno.EINVAL):
        vm.set_memory_slot(0, HIGH, ram, size=0)


@pytest.mark.parametrize("guest_address", [-0x1000, 1 << 52, (1 << 52) - 0x1000])
def test_slot_beyond_physical_space(vm: VM, guest_address: int) -> None:
    with GuestMemory(SLOT_RAM) as ram, raises(hvcore.InvalidArgument, r"beyond 52-bit physical space", errno.EINVAL):
        vm.set_memory_slot(0, guest_address, ram)


def test_delete_missing_slot(vm: VM) -> None:
    ram_slot(vm, 0)
    with raises(hvcore.InvalidArgument, r"cannot delete memory slot 5: it does not exist", errno.EINVAL):
        vm.delete_memory_slot(5)
    vm.delete_memory_slot(0)
    with raises(hvcore.InvalidArgument, r"cannot delete memory slot 0: it does not exist", errno.EINVAL):
        vm.delete_memory_slot(0)


@pytest.mark.parametrize("change", ["smaller", "other-offset", "other-buffer"])
def test_existing_slot_cannot_change_size_or_buffer(vm: VM, change: str) -> None:
    ram = GuestMemory(2 * SLOT_RAM)
    before = vm.set_memory_slot(0, HIGH, ram, size=SLOT_RAM)
    message = r"slot 0 exists with another size or buffer; delete it first"
    with GuestMemory(SLOT_RAM) as other, raises(hvcore.InvalidArgument, message, errno.EINVAL):
        if change == "smaller":
            vm.set_memory_slot(0, HIGH, ram, size=SLOT_RAM // 2)
        elif change == "other-offset":
            vm.set_memory_slot(0, HIGH, ram, offset=0x1000, size=SLOT_RAM)
        else:
            vm.set_memory_slot(0, HIGH, other)
    assert vm.memory_slots() == (before,)


def test_existing_slot_may_move_and_toggle_dirty_logging(vm: VM) -> None:
    """The allowed changes, so the refusals above are refusals of the change, not of any second call."""
    ram = ram_slot(vm, 0)
    moved = vm.set_memory_slot(0, 2 * HIGH, ram)
    assert moved.guest_address == 2 * HIGH
    logged = vm.set_slot_flags(0, SlotFlags.LOG_DIRTY_PAGES)
    assert logged.flags == SlotFlags.LOG_DIRTY_PAGES


def test_readonly_cannot_change_in_place(vm: VM) -> None:
    ram = GuestMemory(SLOT_RAM)
    before = vm.set_memory_slot(0, HIGH, ram)
    with raises(hvcore.InvalidArgument, r"READONLY flag cannot change in place; use set_slot_flags\(\)", errno.EINVAL):
        vm.set_memory_slot(0, HIGH, ram, flags=SlotFlags.READONLY)
    assert vm.memory_slots() == (before,)
    after = vm.set_slot_flags(0, SlotFlags.READONLY)
    assert after.readonly
    assert vm.memory_slots() == (after,)
    with raises(hvcore.InvalidArgument, r"READONLY flag cannot change in place", errno.EINVAL):
        vm.set_memory_slot(0, HIGH, ram)
    assert not vm.set_slot_flags(0, SlotFlags(0)).readonly


@pytest.mark.parametrize("bits", [0x4, 0x8, 1 << 16, 1 << 31])
def test_unknown_slot_flag_bits(vm: VM, bits: int) -> None:
    message = rf"unknown slot flag bits {bits:#x}\b"
    with GuestMemory(SLOT_RAM) as ram, raises(hvcore.InvalidArgument, message, errno.EINVAL):
        vm.set_memory_slot(0, HIGH, ram, flags=SlotFlags(bits | SlotFlags.LOG_DIRTY_PAGES))
    assert vm.memory_slots() == ()


@pytest.mark.parametrize(
    ("start", "wanted"),
    [
        (SlotFlags(0), SlotFlags(0x4)),
        (SlotFlags(0), SlotFlags(0x4) | SlotFlags.READONLY),
        (SlotFlags.READONLY, SlotFlags(0x4)),
        (SlotFlags.READONLY, SlotFlags(0x8) | SlotFlags.READONLY),
    ],
    ids=["rw-keep", "rw-to-ro", "ro-to-rw", "ro-keep"],
)
def test_set_slot_flags_with_unknown_bits_keeps_the_slot(vm: VM, start: SlotFlags, wanted: SlotFlags) -> None:
    """A refused flag change must not lose the slot (set_slot_flags deletes before it re-adds a READONLY change)."""
    before = vm.set_memory_slot(0, HIGH, GuestMemory(SLOT_RAM), flags=start)
    unknown = int(wanted) & ~int(SlotFlags.READONLY | SlotFlags.LOG_DIRTY_PAGES)
    with raises(hvcore.InvalidArgument, rf"unknown slot flag bits {unknown:#x}", errno.EINVAL):
        vm.set_slot_flags(0, wanted)
    assert vm.memory_slots() == (before,), "the refused set_slot_flags() deleted the slot"


def test_set_slot_flags_on_closed_memory_keeps_the_slot(vm: VM) -> None:
    """Closing a mapped GuestMemory defers the unmap; a READONLY toggle must not unmap it under the slot."""
    ram = GuestMemory(SLOT_RAM)
    before = vm.set_memory_slot(0, HIGH, ram)
    ram.close()
    with raises(hvcore.ClosedError, r"closed guest memory", errno.EBADF):
        vm.set_slot_flags(0, SlotFlags.READONLY)
    assert vm.memory_slots() == (before,), "the refused set_slot_flags() deleted the slot"


def test_set_slot_flags_of_missing_slot(vm: VM) -> None:
    with raises(hvcore.NotFound, r"memory slot 9 does not exist", errno.ENOENT):
        vm.set_slot_flags(9, SlotFlags.READONLY)


def test_dirty_log_not_enabled(vm: VM) -> None:
    ram_slot(vm, 0)
    with raises(hvcore.NotFound, r"slot 0 does not log dirty pages; set SlotFlags.LOG_DIRTY_PAGES", errno.ENOENT):
        vm.get_dirty_log(0)
    vm.set_slot_flags(0, SlotFlags.LOG_DIRTY_PAGES)
    assert vm.get_dirty_log(0).slot == 0


def test_dirty_log_of_missing_slot(vm: VM) -> None:
    ram_slot(vm, 0, flags=SlotFlags.LOG_DIRTY_PAGES)
    with raises(hvcore.NotFound, r"memory slot 7 does not exist", errno.ENOENT):
        vm.get_dirty_log(7)


def test_map_closed_guest_memory(vm: VM) -> None:
    ram = GuestMemory(SLOT_RAM)
    ram.close()
    with raises(hvcore.ClosedError, r"cannot map closed guest memory", errno.EBADF):
        vm.set_memory_slot(0, HIGH, ram)
    assert vm.memory_slots() == ()


# -- GuestMemory (no backend) ------------------------------------------------


@pytest.mark.parametrize(
    ("size", "cls", "message"),
    [
        (0, hvcore.InvalidArgument, r"guest memory size must be a positive integer, got 0"),
        (-4096, hvcore.InvalidArgument, r"guest memory size must be a positive integer, got -4096"),
        (4096.0, hvcore.InvalidArgument, r"guest memory size must be a positive integer, got 4096\.0"),
        ("4096", hvcore.InvalidArgument, r"guest memory size must be a positive integer, got '4096'"),
        (100, hvcore.AlignmentError, r"guest memory size 0x64 is not a multiple of the page size"),
        (4097, hvcore.AlignmentError, r"guest memory size 0x1001 is not a multiple of the page size"),
        (2**60, hvcore.InvalidArgument, r"size 0x1000000000000000 is larger than the 0x[0-9a-f]+ hvcore allows"),
        (MAX_GUEST_MEMORY + 4096, hvcore.InvalidArgument, r"is larger than the 0x[0-9a-f]+ hvcore allows"),
    ],
    ids=["zero", "negative", "float", "str", "100", "page+1", "2**60", "max+page"],
)
def test_guest_memory_bad_size(size: object, cls: type[hvcore.HvError], message: str) -> None:
    with raises(cls, message, errno.EINVAL):
        GuestMemory(size)  # type: ignore[arg-type]


def test_guest_memory_the_host_cannot_reserve() -> None:
    """A size hvcore allows but the host refuses (ENOMEM from mmap) is ResourceExhausted, not a raw OSError.

    The address-space limit makes every host refuse 1 TiB; it is restored at once.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        used = int(statm.read().split()[0]) * PAGE_SIZE
    limit = used + (1 << 30)
    if hard != resource.RLIM_INFINITY and hard < limit:
        pytest.skip("the address-space hard limit is too low to lower the soft one safely")
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        with raises(hvcore.ResourceExhausted, r"0x10000000000\b", errno.ENOMEM):
            GuestMemory(1 << 40)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.read(SLOT_RAM, 1), r"range 0x10000\+0x1 is outside guest memory of size 0x10000"),
        (lambda m: m.read(SLOT_RAM - 1, 2), r"range 0xffff\+0x2 is outside guest memory"),
        (lambda m: m.read(-1, 1), r"range -0x1\+0x1 is outside guest memory"),
        (lambda m: m.read(0, -1), r"range 0x0\+-0x1 is outside guest memory"),
        (lambda m: m.read(0, SLOT_RAM + 1), r"range 0x0\+0x10001 is outside guest memory"),
        (lambda m: m.write(SLOT_RAM - 1, b"ab"), r"range 0xffff\+0x2 is outside guest memory"),
        (lambda m: m.write(-4096, b"a"), r"range -0x1000\+0x1 is outside guest memory"),
        (lambda m: m.write(1 << 64, b"a"), r"is outside guest memory"),
        (lambda m: m.fill(SLOT_RAM - 1, 2), r"range 0xffff\+0x2 is outside guest memory"),
        (lambda m: m.fill(0, -1), r"range 0x0\+-0x1 is outside guest memory"),
        (lambda m: m.fill(0, 1, 256), r"\b256\b"),
        (lambda m: m.fill(0, 1, -1), r"-1\b"),
    ],
    ids=["read-end", "read-straddle", "read-negative-offset", "read-negative-length", "read-too-long",
         "write-straddle", "write-negative-offset", "write-2**64", "fill-straddle", "fill-negative-length",
         "fill-byte-256", "fill-byte-negative"],
)
def test_guest_memory_access_out_of_range(call: Callable[[GuestMemory], object], message: str) -> None:
    with GuestMemory(SLOT_RAM) as memory:
        memory.write(0, b"\xaa" * 16)
        with raises(hvcore.InvalidArgument, message, errno.EINVAL):
            call(memory)
        assert memory.read(0, 16) == b"\xaa" * 16
        assert memory.read(SLOT_RAM - 2, 2) == b"\0\0"


@pytest.mark.parametrize(
    "call",
    [lambda m: m.read(0, 1), lambda m: m.write(0, b"x"), lambda m: m.fill(0, 1), lambda m: m.address],
    ids=["read", "write", "fill", "address"],
)
def test_closed_guest_memory(call: Callable[[GuestMemory], object]) -> None:
    memory = GuestMemory(SLOT_RAM)
    memory.close()
    assert memory.closed
    with raises(hvcore.ClosedError, r"guest memory is closed; allocate a new GuestMemory", errno.EBADF):
        call(memory)
    memory.close()  # twice is harmless


def test_lapic_register_offset() -> None:
    with raises(hvcore.InvalidArgument, r"LAPIC register offset 0x21 must be a multiple of 16", errno.EINVAL):
        Lapic().register(0x21)
    with raises(hvcore.InvalidArgument, r"LAPIC register offset 0x400 must be a multiple of 16 below 0x400"):
        Lapic().with_register(0x400, 1)


# -- vCPUs -------------------------------------------------------------------


def test_duplicate_vcpu_id(vm: VM) -> None:
    first = vm.create_vcpu(0)
    with raises(hvcore.AlreadyExists, r"vCPU 0 already exists", errno.EEXIST):
        vm.create_vcpu(0)
    assert vm.vcpus() == (first,)


def test_an_open_vcpu_id_cannot_be_created_again_and_a_closed_one_is_parked(vm: VM) -> None:
    """KVM keeps a vCPU until its VM goes: its id is taken while it is open, and parked once closed."""
    vm.create_vcpu(0)
    with raises(hvcore.AlreadyExists, r"vCPU 0", errno.EEXIST):
        vm.create_vcpu(0)
    vm.vcpus()[0].close()
    assert vm.parked_vcpus() == {0}
    assert vm.create_vcpu(0).id == 0 and vm.parked_vcpus() == frozenset()


@pytest.mark.parametrize("vcpu_id", [-1, 1 << 20, 1 << 32])
def test_vcpu_id_out_of_range(vm: VM, vcpu_id: int) -> None:
    with raises(hvcore.InvalidArgument, rf"vCPU id {vcpu_id} is out of range; use 0 to \d+", errno.EINVAL):
        vm.create_vcpu(vcpu_id)
    assert vm.vcpus() == ()


def _run_to_first_in(hv: Hypervisor, vm: VM) -> VCPU:
    """Boot IO_SIZES and run to its first exit that waits for data (IN port 0x10, 1 byte)."""
    vcpu = boot(hv, vm, real_mode.IO_SIZES)
    for _ in range(3):
        out = vcpu.run()
        assert isinstance(out, IoExit)
        assert not out.is_in
    pending = vcpu.run()
    assert isinstance(pending, IoExit)
    assert (pending.is_in, pending.port, pending.size, pending.count) == (True, 0x10, 1, 1)
    return vcpu


def test_run_twice_without_completing_in(hv: Hypervisor, vm: VM) -> None:
    vcpu = _run_to_first_in(hv, vm)
    for _ in range(2):  # the refusal changes nothing, so it repeats
        with raises(hvcore.ExitNotCompleted, r"vCPU 0 still waits for the answer to .*; call complete\(data\) first"):
            vcpu.run()
    vcpu.complete(0x5A)
    out = vcpu.run()
    assert isinstance(out, IoExit)
    assert (out.port, out.data) == (0x11, (0xAABBCC5A).to_bytes(4, "little"))


def test_complete_without_pending_exit(hv: Hypervisor, vm: VM) -> None:
    fresh = vm.create_vcpu(1)
    with raises(hvcore.StateError, r"vCPU 1 has no IN or MMIO read waiting for data"):
        fresh.complete(0)
    vcpu = boot(hv, vm, real_mode.IO_SIZES)
    assert isinstance(vcpu.run(), IoExit)  # an OUT: nothing to answer
    with raises(hvcore.StateError, r"vCPU 0 has no IN or MMIO read waiting for data"):
        vcpu.complete(b"\x00")


def test_complete_twice(hv: Hypervisor, vm: VM) -> None:
    vcpu = _run_to_first_in(hv, vm)
    vcpu.complete(b"\x5a")
    with raises(hvcore.StateError, r"has no IN or MMIO read waiting for data"):
        vcpu.complete(b"\x5a")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"needs exactly 1 bytes, got 0"),
        (b"ab", r"needs exactly 1 bytes, got 2"),
        (bytes(4), r"needs exactly 1 bytes, got 4"),
        (0x100, r"value 0x100 does not fit the 1-byte access"),
        (1 << 64, r"value 0x10000000000000000 does not fit the 1-byte access"),
        (-0x81, r"value -0x81 does not fit the 1-byte access"),
    ],
    ids=["empty", "2-bytes", "4-bytes", "int-0x100", "int-2**64", "int-negative"],
)
def test_complete_in_with_wrong_length(hv: Hypervisor, vm: VM, data: bytes | int, message: str) -> None:
    vcpu = _run_to_first_in(hv, vm)
    with raises(hvcore.InvalidArgument, message, errno.EINVAL):
        vcpu.complete(data)
    with raises(hvcore.ExitNotCompleted, r"still waits"):  # the IN still waits for its answer
        vcpu.run()
    vcpu.complete(-1)  # 0xff, sign-extended ints are accepted
    out = vcpu.run()
    assert isinstance(out, IoExit)
    assert out.data == (0xAABBCCFF).to_bytes(4, "little")


def test_complete_mmio_read_with_wrong_length(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.MMIO_RW)
    for _ in range(4):
        write = vcpu.run()
        assert isinstance(write, MmioExit)
        assert write.is_write
    read = vcpu.run()
    assert isinstance(read, MmioExit)
    assert (read.is_write, read.length) == (False, 1)
    with raises(hvcore.InvalidArgument, r"needs exactly 1 bytes, got 2", errno.EINVAL):
        vcpu.complete(b"\xa1\xa1")
    with raises(hvcore.InvalidArgument, r"value 0x1a1 does not fit the 1-byte access", errno.EINVAL):
        vcpu.complete(0x1A1)
    vcpu.complete(0xA1)
    after = vcpu.run()
    assert isinstance(after, MmioExit)
    assert (after.is_write, after.length) == (False, 2)


@pytest.mark.parametrize("vector", [256, -1, 1 << 32])
def test_interrupt_vector_out_of_range(vm: VM, vector: int) -> None:
    vcpu = vm.create_vcpu(0)
    with raises(hvcore.InvalidArgument, rf"interrupt vector {vector} is out of range 0-255", errno.EINVAL):
        vcpu.interrupt(vector)


def test_set_msrs_unknown_msr(vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    with raises(hvcore.InvalidArgument, rf"MSR {UNKNOWN_MSR:#x}", errno.EINVAL):
        vcpu.set_msrs({UNKNOWN_MSR: 1})


def test_set_msrs_stops_at_the_first_refused(vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    with raises(hvcore.InvalidArgument, rf"MSR {UNKNOWN_MSR:#x} refused the value 0x1\b", errno.EINVAL):
        vcpu.set_msrs({SYSENTER_CS: 8, UNKNOWN_MSR: 1, SYSENTER_CS + 1: 0x1234})
    assert vcpu.get_msrs([SYSENTER_CS]) == {SYSENTER_CS: 8}


@pytest.mark.parametrize("indices", [[UNKNOWN_MSR], [SYSENTER_CS, UNKNOWN_MSR]], ids=["alone", "after-a-good-one"])
def test_get_msrs_unknown_msr(vm: VM, indices: list[int]) -> None:
    vcpu = vm.create_vcpu(0)
    with raises(hvcore.InvalidArgument, rf"MSR {UNKNOWN_MSR:#x} cannot be read", errno.EINVAL):
        vcpu.get_msrs(indices)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda v: v.get_msrs([1 << 32]), r"0x100000000"),
        (lambda v: v.get_msrs([-1]), r"-0x1|-1\b"),
        (lambda v: v.set_msrs({(1 << 32) + SYSENTER_CS: 0}), r"0x100000174"),
        (lambda v: v.set_msrs({SYSENTER_CS: 1 << 64}), r"0x10000000000000000"),
        (lambda v: v.set_msrs({SYSENTER_CS: -1}), r"-0x1|-1\b"),
    ],
    ids=["get-index-2**32", "get-index-negative", "set-index-2**32", "set-value-2**64", "set-value-negative"],
)
def test_msr_index_or_value_out_of_range(vm: VM, call: Callable[[VCPU], object], message: str) -> None:
    """Indices are u32 and values u64 in KVM: a wider one must be refused, not silently truncated."""
    vcpu = vm.create_vcpu(0)
    vcpu.set_msrs({SYSENTER_CS: 8})
    with raises(hvcore.InvalidArgument, message, errno.EINVAL):
        call(vcpu)
    assert vcpu.get_msrs([SYSENTER_CS]) == {SYSENTER_CS: 8}


def test_set_cpuid_too_many_entries(vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    with raises(hvcore.InvalidArgument, r"KVM_SET_CPUID2|E2BIG|too many", errno.E2BIG):
        vcpu.set_cpuid([CpuidEntry(function=i) for i in range(300)])


def test_set_mp_state_unknown(vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    with raises(hvcore.InvalidArgument, r"\b99\b", errno.EINVAL):
        vcpu.set_mp_state(99)  # type: ignore[arg-type]
    assert vcpu.get_mp_state() == MpState.RUNNABLE


def test_translate_address_wider_than_64_bits(vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    with raises(hvcore.InvalidArgument, r"0x10000000000000000", errno.EINVAL):
        vcpu.translate(1 << 64)


@pytest.mark.parametrize("size", [0, 100, 4095, 4097, 8192])
def test_set_xsave_wrong_size(vm: VM, size: int) -> None:
    vcpu = vm.create_vcpu(0)
    with raises(hvcore.InvalidArgument, rf"Xsave\.region is {size} bytes; .* holds exactly 4096", errno.EINVAL):
        vcpu.set_xsave(Xsave(bytes(size)))


@pytest.mark.parametrize("value", [16, -1, 1 << 64])
def test_cr8_out_of_range(vm: VM, value: int) -> None:
    vcpu = vm.create_vcpu(0)
    with raises(hvcore.InvalidArgument, rf"CR8 is a 4-bit task priority; {value} is out of range", errno.EINVAL):
        vcpu.cr8 = value


def test_guest_debug_needs_eight_registers(vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    with raises(hvcore.InvalidArgument, r"GuestDebug\.debugreg has \d+ entries; .* holds exactly 8", errno.EINVAL):
        vcpu.set_guest_debug(GuestDebug(debugreg=(0,) * 7))


# -- interrupt controllers, clock ---------------------------------------------


def test_second_irqchip(hv: Hypervisor, vm: VM) -> None:
    if not has_irqchip(hv, vm):
        return
    with raises(hvcore.AlreadyExists, r"KVM_CREATE_IRQCHIP|irqchip", errno.EEXIST):
        vm.create_irqchip()


def test_irqchip_after_a_vcpu(hv: Hypervisor, vm: VM) -> None:
    """KVM refuses (EINVAL) once a vCPU exists; the message must say so, not just 'Invalid argument'."""
    vm.create_vcpu(0)
    if hvcore.Capability.IRQCHIP not in hv.capabilities():  # divergence: no irqchip at all (see tests/quirks.py)
        with pytest.raises(hvcore.Unsupported):
            vm.create_irqchip()
        return
    with raises(hvcore.InvalidArgument, r"(?i)before .*vCPU", errno.EINVAL):
        vm.create_irqchip()


def test_second_pit(hv: Hypervisor, vm: VM) -> None:
    if not has_irqchip(hv, vm):
        return
    vm.create_pit()
    with raises(hvcore.AlreadyExists, r"KVM_CREATE_PIT2|PIT", errno.EEXIST):
        vm.create_pit()


def test_pit_without_irqchip(vm: VM) -> None:
    with raises(hvcore.NotFound, r"KVM_CREATE_PIT2|irqchip", errno.ENOENT):
        vm.create_pit()


@pytest.mark.parametrize("call", [lambda v: v.get_lapic(), lambda v: v.set_lapic(Lapic())], ids=["get", "set"])
def test_lapic_without_irqchip(vm: VM, call: Callable[[VCPU], object]) -> None:
    vcpu = vm.create_vcpu(0)
    with raises(hvcore.InvalidArgument, r"LAPIC|irqchip", errno.EINVAL):
        call(vcpu)


@pytest.mark.parametrize(
    ("call", "cls", "message", "code"),
    [
        (lambda vm: vm.irq_line(4, True), hvcore.NotFound, r"KVM_IRQ_LINE|irqchip", errno.ENXIO),
        (lambda vm: vm.get_irqchip(IrqchipId.IOAPIC), hvcore.NotFound, r"KVM_GET_IRQCHIP|irqchip", errno.ENXIO),
    ],
    ids=["irq_line", "get_irqchip"],
)
def test_irqchip_calls_without_irqchip(
    vm: VM, call: Callable[[VM], object], cls: type[hvcore.HvError], message: str, code: int
) -> None:
    with raises(cls, message, code):
        call(vm)


@pytest.mark.parametrize("irq", [-1, 1024])
def test_irq_line_out_of_range(hv: Hypervisor, vm: VM, irq: int) -> None:
    if not has_irqchip(hv, vm):
        return
    with raises(hvcore.InvalidArgument, rf"IRQ {irq} is out of range", errno.EINVAL):
        vm.irq_line(irq, True)


@pytest.mark.parametrize("value", [-1, -(1 << 63), 1 << 64])
def test_set_clock_out_of_range(vm: VM, value: int) -> None:
    with raises(hvcore.InvalidArgument, rf"clock value {value} is not an unsigned 64-bit count", errno.EINVAL):
        vm.set_clock(value)


@pytest.mark.parametrize("address", [-0x1000, 1 << 32])
def test_tss_address_out_of_range(vm: VM, address: int) -> None:
    with raises(hvcore.InvalidArgument, r"TSS address .* must be below 4 GiB", errno.EINVAL):
        vm.set_tss_address(address)


def test_check_extension_of_a_number_wider_than_c_int(hv: Hypervisor, vm: VM) -> None:
    """KVM answers 0 for a capability it does not know; a number too wide for the ioctl is 0 or InvalidArgument."""
    for target in (hv, vm):
        outcome: object
        try:
            outcome = target.check_extension(1 << 40)
        except hvcore.InvalidArgument as exc:
            outcome = exc
        if isinstance(outcome, hvcore.HvError):
            assert type(outcome) is hvcore.InvalidArgument
            assert re.search(r"1099511627776|0x10000000000", outcome.message), outcome.message
        else:
            assert outcome == 0


# -- use after close -----------------------------------------------------------

HYPERVISOR_CALLS: dict[str, Callable[[Hypervisor], object]] = {
    "api_version": lambda h: h.api_version(),
    "check_extension": lambda h: h.check_extension(hvcore.Capability.NR_MEMSLOTS),
    "capabilities": lambda h: h.capabilities(),
    "vcpu_mmap_size": lambda h: h.vcpu_mmap_size(),
    "msr_index_list": lambda h: h.msr_index_list(),
    "supported_cpuid": lambda h: h.supported_cpuid(),
    "recommended_vcpus": lambda h: h.recommended_vcpus(),
    "max_vcpus": lambda h: h.max_vcpus(),
    "create_vm": lambda h: h.create_vm(),
}

VM_CALLS: dict[str, Callable[[VM], object]] = {
    "check_extension": lambda vm: vm.check_extension(hvcore.Capability.NR_MEMSLOTS),
    "set_memory_slot": lambda vm: vm.set_memory_slot(1, 2 * HIGH, GuestMemory(SLOT_RAM)),
    "delete_memory_slot": lambda vm: vm.delete_memory_slot(0),
    "set_slot_flags": lambda vm: vm.set_slot_flags(0, SlotFlags.LOG_DIRTY_PAGES),
    "memory_slots": lambda vm: vm.memory_slots(),
    "get_dirty_log": lambda vm: vm.get_dirty_log(0),
    "create_vcpu": lambda vm: vm.create_vcpu(1),
    "vcpus": lambda vm: vm.vcpus(),
    "create_irqchip": lambda vm: vm.create_irqchip(),
    "irq_line": lambda vm: vm.irq_line(4, True),
    "get_irqchip": lambda vm: vm.get_irqchip(IrqchipId.IOAPIC),
    "create_pit": lambda vm: vm.create_pit(),
    "get_clock": lambda vm: vm.get_clock(),
    "set_clock": lambda vm: vm.set_clock(0),
    "set_tss_address": lambda vm: vm.set_tss_address(0xFFFBD000),
    "set_identity_map_address": lambda vm: vm.set_identity_map_address(0xFFFBC000),
}

VCPU_CALLS: dict[str, Callable[[VCPU], object]] = {
    "run": lambda v: v.run(),
    "complete": lambda v: v.complete(0),
    "get_regs": lambda v: v.get_regs(),
    "set_regs": lambda v: v.set_regs(Regs()),
    "get_sregs": lambda v: v.get_sregs(),
    "get_fpu": lambda v: v.get_fpu(),
    "get_xsave": lambda v: v.get_xsave(),
    "set_xsave": lambda v: v.set_xsave(Xsave()),
    "get_xcrs": lambda v: v.get_xcrs(),
    "get_msrs": lambda v: v.get_msrs([SYSENTER_CS]),
    "set_msrs": lambda v: v.set_msrs({SYSENTER_CS: 0}),
    "set_cpuid": lambda v: v.set_cpuid([]),
    "get_cpuid": lambda v: v.get_cpuid(),
    "get_lapic": lambda v: v.get_lapic(),
    "get_debugregs": lambda v: v.get_debugregs(),
    "get_vcpu_events": lambda v: v.get_vcpu_events(),
    "get_mp_state": lambda v: v.get_mp_state(),
    "set_mp_state": lambda v: v.set_mp_state(MpState.RUNNABLE),
    "interrupt": lambda v: v.interrupt(0x20),
    "nmi": lambda v: v.nmi(),
    "set_guest_debug": lambda v: v.set_guest_debug(GuestDebug()),
    "translate": lambda v: v.translate(0),
    "immediate_exit": lambda v: v.immediate_exit,
    "set_immediate_exit": lambda v: setattr(v, "immediate_exit", True),
    "request_interrupt_window": lambda v: v.request_interrupt_window,
    "ready_for_interrupt_injection": lambda v: v.ready_for_interrupt_injection,
    "if_flag": lambda v: v.if_flag,
    "cr8": lambda v: v.cr8,
    "apic_base": lambda v: v.apic_base,
}


@pytest.mark.parametrize("name", list(HYPERVISOR_CALLS))
def test_hypervisor_use_after_close(hv: Hypervisor, name: str) -> None:
    hv.create_vm()  # a used hypervisor: nothing cached may answer after close
    hv.close()
    with raises(hvcore.ClosedError, r"closed", errno.EBADF):
        HYPERVISOR_CALLS[name](hv)


@pytest.mark.parametrize("name", list(VM_CALLS))
def test_vm_use_after_close(vm: VM, name: str) -> None:
    ram_slot(vm, 0)
    vm.create_vcpu(0)
    vm.close()
    with raises(hvcore.ClosedError, r"closed", errno.EBADF):
        VM_CALLS[name](vm)


@pytest.mark.parametrize("name", list(VCPU_CALLS))
def test_vcpu_use_after_close(vm: VM, name: str) -> None:
    vcpu = vm.create_vcpu(0)
    vcpu.close()
    with raises(hvcore.ClosedError, r"vCPU 0 is closed|closed", errno.EBADF):
        VCPU_CALLS[name](vcpu)


def test_vcpu_after_its_vm_closed(vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    vm.close()
    with raises(hvcore.ClosedError, r"closed", errno.EBADF):
        vcpu.get_regs()
    vcpu.kick()  # kick() stays harmless after close: a watchdog thread may race with it


def test_vm_and_vcpu_after_their_hypervisor_closed(hv: Hypervisor) -> None:
    vm = hv.create_vm()
    vcpu = vm.create_vcpu(0)
    hv.close()
    with raises(hvcore.ClosedError, r"closed", errno.EBADF):
        vm.create_vcpu(1)
    with raises(hvcore.ClosedError, r"closed", errno.EBADF):
        vcpu.run()


def test_close_twice_is_harmless(hv: Hypervisor) -> None:
    vm = hv.create_vm()
    vcpu = vm.create_vcpu(0)
    for obj in (vcpu, vm, hv):
        obj.close()
        obj.close()
    with hv, vm, vcpu:  # a context manager around a closed object closes it again, quietly
        pass


# -- the registry --------------------------------------------------------------


class _UnusableBackend:
    """A backend that is never usable, for the registry tests."""

    name = "test-unusable"
    reason = "the test hypervisor is switched off; use another backend"

    def unavailable_reason(self) -> str | None:
        return self.reason

    def open(self) -> Hypervisor:
        raise hvcore.BackendUnavailable(self.reason)


UNUSABLE = _UnusableBackend()


@pytest.fixture
def private_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A copy of the backend registry that the test may change; the real one comes back afterwards."""
    targets = dict(registry.registered_backends())
    monkeypatch.setattr(registry, "_targets", targets)
    return targets


def test_open_unknown_backend() -> None:
    with raises(hvcore.InvalidArgument, r"unknown backend 'nonsense'; known: .*kvm", errno.EINVAL):
        hvcore.open_hypervisor("nonsense")


def test_open_unusable_backend(private_registry: dict[str, str]) -> None:
    hvcore.register_backend("test-unusable", f"{__name__}:UNUSABLE")
    assert hvcore.available_backends()["test-unusable"] == UNUSABLE.reason
    message = rf"backend 'test-unusable' is not usable here: {re.escape(UNUSABLE.reason)}"
    with raises(hvcore.BackendUnavailable, message):
        hvcore.open_hypervisor("test-unusable")


@pytest.mark.parametrize("name", hvcore.backend_names())
def test_open_unusable_builtin_backend(name: str) -> None:
    reason = hvcore.available_backends()[name]
    if reason is None:
        pytest.skip(f"backend {name!r} is usable here")
    with raises(hvcore.BackendUnavailable, re.escape(reason)):
        hvcore.open_hypervisor(name)


def test_auto_with_nothing_usable(private_registry: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    hvcore.register_backend("test-unusable", f"{__name__}:UNUSABLE")
    monkeypatch.setattr(registry, "AUTO_ORDER", ("test-unusable",))
    message = rf"no backend is usable here:\n  test-unusable: {re.escape(UNUSABLE.reason)}"
    with raises(hvcore.BackendUnavailable, message):
        hvcore.open_hypervisor("auto")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("hvcore_test_no_such_module:BACKEND", r"cannot be loaded: No module named 'hvcore_test_no_such_module'"),
        ("hvcore:NO_SUCH_ATTRIBUTE", r"cannot be loaded: .*NO_SUCH_ATTRIBUTE"),
        ("hvcore:PAGE_SIZE", r"is not an hvcore Backend"),
    ],
    ids=["no-module", "no-attribute", "not-a-backend"],
)
def test_open_unloadable_backend(private_registry: dict[str, str], target: str, message: str) -> None:
    hvcore.register_backend("test-broken", target)
    with raises(hvcore.BackendUnavailable, message):
        hvcore.open_hypervisor("test-broken")
    assert hvcore.available_backends()["test-broken"] is not None


def test_register_backend_refuses_to_clobber(private_registry: dict[str, str]) -> None:
    original = private_registry["kvm"]
    message = rf"backend 'kvm' is already registered as '{original}'; pass clobber=True"
    with raises(hvcore.InvalidArgument, message, errno.EINVAL):
        hvcore.register_backend("kvm", "elsewhere:BACKEND")
    assert registry.registered_backends()["kvm"] == original
    hvcore.register_backend("kvm", original)  # the same target again is no clobber
    hvcore.register_backend("kvm", "elsewhere:BACKEND", clobber=True)
    assert registry.registered_backends()["kvm"] == "elsewhere:BACKEND"


@pytest.mark.parametrize(("name", "target"), [("auto", f"{__name__}:UNUSABLE"), ("test-x", "no_colon_here")])
def test_register_backend_bad_name_or_target(private_registry: dict[str, str], name: str, target: str) -> None:
    with raises(hvcore.InvalidArgument, rf"cannot register backend '{name}'", errno.EINVAL):
        hvcore.register_backend(name, target)
    assert name not in registry.registered_backends()


# -- the errors themselves -----------------------------------------------------

ERROR_CLASSES = [
    cls for cls in (getattr(errors, n) for n in errors.__all__) if isinstance(cls, type) and issubclass(cls, Exception)
]


def test_every_error_class_is_exported_and_an_hverror() -> None:
    assert len(ERROR_CLASSES) == 20
    for cls in ERROR_CLASSES:
        assert issubclass(cls, hvcore.HvError), cls
        assert getattr(hvcore, cls.__name__) is cls
        assert cls.__module__ == "hvcore"


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_error_pickles_with_its_fields(cls: type[hvcore.HvError], protocol: int) -> None:
    for exc in (
        cls("slot 3 overlaps slot 1", errno=errno.EIO, operation="KVM_SET_USER_MEMORY_REGION"),
        cls("no errno given"),
    ):
        back = pickle.loads(pickle.dumps(exc, protocol=protocol))
        assert type(back) is cls
        assert (back.message, back.errno, back.operation) == (exc.message, exc.errno, exc.operation)
        assert str(back) == str(exc) == exc.message
        assert back.args == exc.args
    assert cls("x").errno == cls.default_errno


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_error_repr_shows_its_fields(cls: type[hvcore.HvError]) -> None:
    exc = cls("slot 3 overlaps slot 1", errno=errno.EEXIST, operation="set_memory_slot")
    assert repr(exc) == f"{cls.__name__}('slot 3 overlaps slot 1', errno={errno.EEXIST}, operation='set_memory_slot')"


def test_raised_error_pickles_with_its_fields(vm: VM) -> None:
    ram_slot(vm, 0)
    with raises(hvcore.SlotOverlap, r"overlaps slot 0", errno.EEXIST) as info:
        vm.set_memory_slot(1, HIGH, GuestMemory(SLOT_RAM))
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is hvcore.SlotOverlap
    assert (back.message, back.errno, back.operation) == (info.value.message, errno.EEXIST, info.value.operation)
    assert isinstance(back, hvcore.AlreadyExists)
    assert f"errno={errno.EEXIST}" in repr(back)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (errno.EINVAL, hvcore.InvalidArgument),
        (errno.E2BIG, hvcore.InvalidArgument),
        (errno.EFAULT, hvcore.InvalidArgument),
        (errno.EEXIST, hvcore.AlreadyExists),
        (errno.ENOENT, hvcore.NotFound),
        (errno.ENXIO, hvcore.NotFound),
        (errno.EBADF, hvcore.ClosedError),
        (errno.ENOMEM, hvcore.ResourceExhausted),
        (errno.EMFILE, hvcore.ResourceExhausted),
        (errno.ENOTTY, hvcore.Unsupported),
        (errno.EBUSY, hvcore.StateError),
        (errno.EIO, hvcore.HypervisorFault),
        (errno.ENOEXEC, hvcore.HypervisorFault),
    ],
    ids=lambda v: errno.errorcode.get(v, "") if isinstance(v, int) else v.__name__,
)
def test_error_for_errno(code: int, cls: type[hvcore.HvError]) -> None:
    exc = errors.error_for_errno(code, "KVM_FROB", "vCPU 3")
    assert type(exc) is cls
    assert (exc.errno, exc.operation) == (code, "KVM_FROB")
    assert exc.message.startswith(f"KVM_FROB failed: {errno.errorcode[code]} (")
    assert exc.message.endswith("): vCPU 3")
