"""Linear-to-physical translation through the guest's page tables, as the processor does it.

The simulator needs this outside Unicorn's own MMU when it touches guest
memory on the guest's behalf: to deliver interrupts (IDT, GDT, TSS and stack
are linear addresses) and to complete exits that name linear addresses::

    physical = translate(sregs, 0x7FFF_F000, memory, write=True, user=False)
    frame = read_linear(sregs, memory, sregs.idt.base + 16 * vector, 16)

Every paging mode is supported: none, legacy 32-bit (with 4 MiB pages under
CR4.PSE, PSE-36 included), PAE and 4-level long mode (2 MiB and 1 GiB pages),
and 5-level under CR4.LA57. Protection follows Intel SDM Vol. 3 section 4.6:
present, R/W with CR0.WP, U/S, NX under EFER.NXE, SMEP and SMAP. Accessed and
dirty bits are set as the processor sets them, but only once the access is
known to succeed (the SDM allows either; a faulting access leaves the tables
alone). Protection keys (CR4.PKE) are not modelled.

Accesses to guest-physical memory that no slot backs raise whatever the
:class:`PhysicalMemory` raises (``hvcore.NotFound`` by contract); they are not
guest faults, and the caller reports them as KVM would (an internal error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from hvcore.errors import HvError
from hvcore.types import Sregs
from hvcore.x86 import CR0_PG, CR0_WP, CR4_PAE, EFER_LMA
from hvcore_sim.faults import NonCanonical, PageFault

__all__ = [
    "CR4_LA57",
    "CR4_PSE",
    "CR4_SMAP",
    "CR4_SMEP",
    "EFER_NXE",
    "PF_FETCH",
    "PF_PRESENT",
    "PF_RSVD",
    "PF_USER",
    "PF_WRITE",
    "PHYS_ADDR_BITS",
    "NonCanonical",
    "PageFault",
    "PhysicalMemory",
    "is_canonical",
    "lookup",
    "read_linear",
    "translate",
    "translate_range",
    "write_linear",
]

PF_PRESENT: Final = 1 << 0
"""#PF error code: the page was present (a protection or reserved-bit fault)."""
PF_WRITE: Final = 1 << 1
"""#PF error code: the access was a write."""
PF_USER: Final = 1 << 2
"""#PF error code: the access was a user-mode (CPL3) access."""
PF_RSVD: Final = 1 << 3
"""#PF error code: a reserved bit was set in a paging-structure entry."""
PF_FETCH: Final = 1 << 4
"""#PF error code: an instruction fetch (only reported with SMEP, or with PAE/4-level paging and NXE)."""

PHYS_ADDR_BITS: Final = 40
"""MAXPHYADDR: the bits above it in a table entry are reserved. 40 is what Unicorn's MMU
checks and its CPUID 0x80000008 reports, so this walker faults exactly where execution does."""

PAGE_SIZE: Final = 4096

CR4_PSE: Final = 1 << 4
"""CR4.PSE: 4 MiB pages in legacy 32-bit paging."""
CR4_LA57: Final = 1 << 12
"""CR4.LA57: 5-level paging, 57-bit linear addresses."""
CR4_SMEP: Final = 1 << 20
"""CR4.SMEP: supervisor fetches from user pages fault."""
CR4_SMAP: Final = 1 << 21
"""CR4.SMAP: supervisor data accesses to user pages fault (explicit ones unless EFLAGS.AC)."""
EFER_NXE: Final = 1 << 11
"""EFER.NXE: bit 63 of PAE/4-level entries is the no-execute bit (else reserved)."""

_P, _RW, _US, _ACCESSED, _DIRTY, _PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
_NX: Final = 1 << 63
_ADDRESS: Final = ((1 << PHYS_ADDR_BITS) - 1) & ~0xFFF
_HIGH_RESERVED: Final = ((1 << 52) - 1) & ~((1 << PHYS_ADDR_BITS) - 1)
_PDPTE_RESERVED: Final = 0x1E6 | _HIGH_RESERVED | _NX  # bits 2:1, 8:5 and 63: PAE PDPTEs have no R/W, U/S, A, NX


class PhysicalMemory(Protocol):
    """Guest-physical memory: what the caller implements over its memory slots.

    An address that no slot backs raises ``hvcore.NotFound``. ``hvcore.GuestMemory``
    fits as-is for a VM whose only slot starts at guest-physical 0.
    """

    def read(self, address: int, length: int, /) -> bytes:
        """``length`` bytes from guest-physical ``address``."""
        ...

    def write(self, address: int, data: bytes, /) -> None:
        """Store ``data`` at guest-physical ``address``."""
        ...


@dataclass(slots=True)
class _Walk:
    """What a successful walk found: the frame and the rights all levels grant together."""

    physical: int
    writable: bool
    user: bool
    no_execute: bool
    entries: list[tuple[int, int]]  # (physical address, value) of each entry that gets an accessed bit
    wide: bool  # 8-byte entries


def is_canonical(linear: int, sregs: Sregs) -> bool:
    """True when ``linear`` is canonical for the current paging (48 bits, or 57 with CR4.LA57)."""
    bits = 57 if sregs.cr4 & CR4_LA57 else 48
    top = linear >> (bits - 1)
    return top in (0, (1 << (65 - bits)) - 1)


def translate(
    sregs: Sregs,
    linear: int,
    memory: PhysicalMemory,
    *,
    write: bool,
    user: bool,
    fetch: bool = False,
    ac: bool = False,
) -> int:
    """The guest-physical address of ``linear``, setting accessed (and, for a write, dirty) bits.

    ``user`` is a CPL3 access; implicit supervisor accesses (descriptor tables,
    TSS, interrupt delivery) pass ``user=False``. ``ac`` is EFLAGS.AC of an
    explicit supervisor data access: it lifts SMAP. Raises :class:`PageFault`
    with the architectural error code, or :class:`NonCanonical` in long mode.
    """
    long_mode = bool(sregs.efer & EFER_LMA)
    if long_mode:
        linear &= (1 << 64) - 1
        if not is_canonical(linear, sregs):
            raise NonCanonical(linear)
    else:
        linear &= 0xFFFFFFFF
    if not sregs.cr0 & CR0_PG:
        return linear

    code = (PF_WRITE if write else 0) | (PF_USER if user else 0)
    if fetch and (sregs.cr4 & CR4_SMEP or (sregs.cr4 & CR4_PAE and sregs.efer & EFER_NXE)):
        code |= PF_FETCH
    if long_mode:
        levels = 5 if sregs.cr4 & CR4_LA57 else 4
        walk = _walk_wide(sregs, memory, linear, sregs.cr3 & _ADDRESS, levels, code)
    elif sregs.cr4 & CR4_PAE:
        walk = _walk_pae(sregs, memory, linear, code)
    else:
        walk = _walk_legacy(sregs, memory, linear, code)

    if not _allowed(sregs, walk, write=write, user=user, fetch=fetch, ac=ac):
        raise PageFault(code | PF_PRESENT, linear)
    _set_accessed_dirty(memory, walk, write)
    return walk.physical


class _Untouched:
    """Reads through to the guest's memory; drops the accessed/dirty-bit writes of a walk."""

    def __init__(self, memory: PhysicalMemory) -> None:
        self._memory = memory

    def read(self, address: int, length: int, /) -> bytes:
        return self._memory.read(address, length)

    def write(self, address: int, data: bytes, /) -> None:
        pass


def lookup(sregs: Sregs, linear: int, memory: PhysicalMemory) -> int | None:
    """Where ``linear`` maps now, or None: a walk that checks no access rights and sets no accessed bits.

    For the simulator's own bookkeeping (where a watched linear address lives), which the guest must not see.
    """
    try:
        return translate(sregs, linear, _Untouched(memory), write=False, user=False, ac=True)
    except (PageFault, NonCanonical, HvError):  # HvError: a table outside every slot
        return None


def fetchable(sregs: Sregs, linear: int, memory: PhysicalMemory, *, user: bool) -> bool:
    """Whether an instruction fetch at ``linear`` would translate now: a walk that sets no accessed bits."""
    try:
        translate(sregs, linear, _Untouched(memory), write=False, user=user, fetch=True)
    except (PageFault, NonCanonical, HvError):
        return False
    return True


def _allowed(sregs: Sregs, walk: _Walk, *, write: bool, user: bool, fetch: bool, ac: bool) -> bool:
    if user:
        return walk.user and not (write and not walk.writable) and not (fetch and walk.no_execute)
    if fetch:
        return not walk.no_execute and not (sregs.cr4 & CR4_SMEP and walk.user)
    if sregs.cr4 & CR4_SMAP and walk.user and not ac:
        return False
    return not (write and not walk.writable and sregs.cr0 & CR0_WP)


def _entry(memory: PhysicalMemory, address: int, size: int) -> int:
    return int.from_bytes(memory.read(address, size), "little")


def _walk_wide(sregs: Sregs, memory: PhysicalMemory, linear: int, table: int, levels: int, code: int) -> _Walk:
    """The 8-byte-entry walk from a table at level ``levels`` (5 PML5 ... 2 PD, 1 PT)."""
    nxe = bool(sregs.efer & EFER_NXE)
    reserved_common = _HIGH_RESERVED | (0 if nxe else _NX)
    writable = user = True
    no_execute = False
    entries: list[tuple[int, int]] = []
    for level in range(levels, 0, -1):
        shift = 12 + 9 * (level - 1)
        address = table + ((linear >> shift) & 0x1FF) * 8
        entry = _entry(memory, address, 8)
        if not entry & _P:
            raise PageFault(code, linear)
        large = level in (2, 3) and bool(entry & _PS)
        reserved = reserved_common
        if level >= 4:
            reserved |= _PS
        elif large:
            reserved |= ((1 << shift) - 1) & ~0x1FFF  # bits shift-1:13 (bit 12 is PAT)
        if entry & reserved:
            raise PageFault(code | PF_PRESENT | PF_RSVD, linear)
        writable &= bool(entry & _RW)
        user &= bool(entry & _US)
        no_execute |= nxe and bool(entry & _NX)
        entries.append((address, entry))
        if large or level == 1:
            size = 1 << shift
            physical = (entry & _ADDRESS & ~(size - 1)) | (linear & (size - 1))
            return _Walk(physical, writable, user, no_execute, entries, wide=True)
        table = entry & _ADDRESS
    raise AssertionError("unreachable: level 1 always ends the walk")


def _walk_pae(sregs: Sregs, memory: PhysicalMemory, linear: int, code: int) -> _Walk:
    # Hardware caches the four PDPTEs at MOV CR3; reading them now is what Unicorn does too.
    pdpte = _entry(memory, (sregs.cr3 & 0xFFFFFFE0) + (linear >> 30) * 8, 8)
    if not pdpte & _P:
        raise PageFault(code, linear)
    if pdpte & _PDPTE_RESERVED:
        raise PageFault(code | PF_PRESENT | PF_RSVD, linear)
    return _walk_wide(sregs, memory, linear, pdpte & _ADDRESS, 2, code)


def _walk_legacy(sregs: Sregs, memory: PhysicalMemory, linear: int, code: int) -> _Walk:
    pde_address = (sregs.cr3 & 0xFFFFF000) + (linear >> 22) * 4
    pde = _entry(memory, pde_address, 4)
    if not pde & _P:
        raise PageFault(code, linear)
    if pde & _PS and sregs.cr4 & CR4_PSE:
        # PSE-36: PDE bits 20:13 hold physical bits 39:32; those beyond MAXPHYADDR and bit 21 are reserved.
        high_bits = min(PHYS_ADDR_BITS, 40) - 32
        if pde & (((1 << 22) - 1) & ~((1 << (13 + high_bits)) - 1)):
            raise PageFault(code | PF_PRESENT | PF_RSVD, linear)
        physical = (pde & 0xFFC00000) | ((pde >> 13) & 0xFF) << 32 | (linear & 0x3FFFFF)
        return _Walk(physical, bool(pde & _RW), bool(pde & _US), False, [(pde_address, pde)], wide=False)
    pte_address = (pde & 0xFFFFF000) + ((linear >> 12) & 0x3FF) * 4
    pte = _entry(memory, pte_address, 4)
    if not pte & _P:
        raise PageFault(code, linear)
    return _Walk(
        (pte & 0xFFFFF000) | (linear & 0xFFF),
        bool(pde & pte & _RW),
        bool(pde & pte & _US),
        False,
        [(pde_address, pde), (pte_address, pte)],
        wide=False,
    )


def _set_accessed_dirty(memory: PhysicalMemory, walk: _Walk, write: bool) -> None:
    last = len(walk.entries) - 1
    for i, (address, entry) in enumerate(walk.entries):
        wanted = entry | _ACCESSED | (_DIRTY if write and i == last else 0)
        if wanted != entry:
            # A and D live in the low byte: writing only that byte leaves the rest of the entry alone.
            memory.write(address, bytes([wanted & 0xFF]))


def translate_range(
    sregs: Sregs, memory: PhysicalMemory, linear: int, length: int, *, write: bool, user: bool = False
) -> list[tuple[int, int]]:
    """``(physical, length)`` pieces for ``length`` bytes at ``linear``, split at 4 KiB page boundaries.

    Every page is translated before the caller touches any, as the processor
    checks a whole access before it performs it. Outside long mode linear
    addresses wrap at 4 GiB.
    """
    wrap = (1 << 64) - 1 if sregs.efer & EFER_LMA else 0xFFFFFFFF
    pieces: list[tuple[int, int]] = []
    done = 0
    while done < length:
        address = (linear + done) & wrap
        size = min(length - done, PAGE_SIZE - (address & (PAGE_SIZE - 1)))
        pieces.append((translate(sregs, address, memory, write=write, user=user), size))
        done += size
    return pieces


def read_linear(sregs: Sregs, memory: PhysicalMemory, linear: int, length: int, *, user: bool = False) -> bytes:
    """``length`` bytes at ``linear`` (a supervisor access unless ``user``); may raise :class:`PageFault`."""
    pieces = translate_range(sregs, memory, linear, length, write=False, user=user)
    return b"".join(memory.read(physical, size) for physical, size in pieces)


def write_linear(sregs: Sregs, memory: PhysicalMemory, linear: int, data: bytes, *, user: bool = False) -> None:
    """Store ``data`` at ``linear``; nothing is written unless every page it touches is writable."""
    offset = 0
    for physical, size in translate_range(sregs, memory, linear, len(data), write=True, user=user):
        memory.write(physical, data[offset : offset + size])
        offset += size
