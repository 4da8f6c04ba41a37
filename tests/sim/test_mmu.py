"""The page-table walker: every paging mode and page size, exact #PF error codes, accessed and dirty bits."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import pytest

from hvcore import NotFound, Sregs
from hvcore.x86 import CR0_PE, CR0_PG, CR0_WP, CR4_PAE, EFER_LMA, EFER_LME
from hvcore_sim.faults import GeneralProtection, NonCanonical, PageFault
from hvcore_sim.mmu import (
    CR4_LA57,
    CR4_PSE,
    CR4_SMAP,
    CR4_SMEP,
    EFER_NXE,
    PF_FETCH,
    PF_PRESENT,
    PF_RSVD,
    PF_USER,
    PF_WRITE,
    read_linear,
    translate,
    translate_range,
    write_linear,
)
from tests.sim import ACCESSED, DIRTY, NX, PS, RW, US, P, PageTables, Ram, open_ram

ROOT = 0x100000


@pytest.fixture
def ram() -> Iterator[Ram]:
    with open_ram() as memory:
        yield memory


def long_sregs(cr3: int = ROOT, *, cr0: int = CR0_PE | CR0_PG | CR0_WP, cr4: int = 0, efer: int = 0) -> Sregs:
    return Sregs(cr0=cr0, cr3=cr3, cr4=CR4_PAE | cr4, efer=EFER_LME | EFER_LMA | efer)


def fault(sregs: Sregs, ram: Ram, linear: int, **access: bool) -> PageFault:
    """The #PF an access raises; it must leave the page tables alone."""
    before = len(ram.writes)
    with pytest.raises(PageFault) as info:
        translate(sregs, linear, ram, write=access.pop("write", False), user=access.pop("user", False), **access)
    assert ram.writes[before:] == []
    assert info.value.linear == linear
    assert info.value.vector == 14
    return info.value


# --- no paging ----------------------------------------------------------------------------------


def test_paging_off_is_identity_and_wraps_at_4_gib(ram: Ram) -> None:
    real = Sregs()
    protected = Sregs(cr0=CR0_PE)
    assert translate(real, 0x12345, ram, write=True, user=False) == 0x12345
    assert translate(protected, 0xFFFF_F000, ram, write=False, user=True) == 0xFFFF_F000
    assert translate(protected, 0x1_0000_1000, ram, write=False, user=False) == 0x1000
    pieces = translate_range(protected, ram, 0xFFFF_FFFE, 4, write=False)
    assert pieces == [(0xFFFF_FFFE, 2), (0, 2)]  # wraps to 0 mid-access
    assert ram.writes == []


# --- 4-level and 5-level paging -----------------------------------------------------------------


def test_4_level_4k_page_sets_accessed_bits_on_read(ram: Ram) -> None:
    tables = PageTables(ram, ROOT)
    linear = 0x0000_7F80_4020_3000  # a different index at every level
    entries = tables.map(linear, 0x345000, P | RW)
    assert len(entries) == 4
    assert translate(long_sregs(), linear + 0x123, ram, write=False, user=False) == 0x345123
    for address in entries:
        assert ram.get(address, 8) & (ACCESSED | DIRTY) == ACCESSED
    assert ram.get(entries[-1], 8) == 0x345000 | P | RW | ACCESSED


def test_4_level_write_sets_dirty_only_in_the_leaf(ram: Ram) -> None:
    tables = PageTables(ram, ROOT)
    entries = tables.map(0x7000, 0x9000, P | RW | US)
    assert translate(long_sregs(), 0x7FF8, ram, write=True, user=True) == 0x9FF8
    assert [ram.get(a, 8) & (ACCESSED | DIRTY) for a in entries] == [ACCESSED] * 3 + [ACCESSED | DIRTY]
    ram.writes.clear()
    translate(long_sregs(), 0x7000, ram, write=True, user=True)
    assert ram.writes == []  # bits already set: the tables are not written again


def test_4_level_2m_page(ram: Ram) -> None:
    tables = PageTables(ram, ROOT)
    entries = tables.map(0xFFFF_8000_0020_0000, 0x4000_0000, P | RW, size=0x200000)
    assert translate(long_sregs(), 0xFFFF_8000_003F_F00D, ram, write=True, user=False) == 0x401F_F00D
    assert ram.get(entries[-1], 8) == 0x4000_0000 | P | RW | PS | ACCESSED | DIRTY


def test_4_level_1g_page(ram: Ram) -> None:
    tables = PageTables(ram, ROOT)
    entries = tables.map(0x80_4000_0000, 0xC0_0000_0000, P, size=0x40000000)
    assert len(entries) == 2
    assert translate(long_sregs(), 0x80_7654_3210, ram, write=False, user=False) == 0xC0_3654_3210
    assert ram.get(entries[-1], 8) == 0xC0_0000_0000 | P | PS | ACCESSED


def test_5_level_paging_with_la57(ram: Ram) -> None:
    tables = PageTables(ram, ROOT, levels=5)
    linear = 0x00FF_0000_0000_5000  # bits 56:48 select the PML5 entry
    entries = tables.map(linear, 0x6000, P | RW)
    sregs = long_sregs(cr4=CR4_LA57)
    assert translate(sregs, linear + 4, ram, write=False, user=False) == 0x6004
    assert len(entries) == 5
    assert all(ram.get(a, 8) & ACCESSED for a in entries)
    with pytest.raises(NonCanonical):  # canonical under LA57, not with 4-level paging
        translate(long_sregs(), linear, ram, write=False, user=False)


def test_non_canonical_address_is_a_general_protection_fault(ram: Ram) -> None:
    with pytest.raises(NonCanonical) as info:
        translate(long_sregs(), 0x0000_8000_0000_0000, ram, write=False, user=False)
    assert isinstance(info.value, GeneralProtection)
    assert (info.value.vector, info.value.error_code, info.value.linear) == (13, 0, 0x0000_8000_0000_0000)
    assert ram.writes == []


# --- PAE and legacy 32-bit paging ---------------------------------------------------------------


def pae_sregs(cr3: int = ROOT, *, efer: int = 0) -> Sregs:
    return Sregs(cr0=CR0_PE | CR0_PG | CR0_WP, cr3=cr3, cr4=CR4_PAE, efer=efer)


def test_pae_4k_and_2m_pages(ram: Ram) -> None:
    tables = PageTables(ram, ROOT, levels=3)
    small = tables.map(0xC000_3000, 0x7000, P | RW)
    large = tables.map(0x4060_0000, 0x80_0020_0000, P, size=0x200000)  # above 4 GiB physical
    assert translate(pae_sregs(), 0xC000_3FFF, ram, write=True, user=False) == 0x7FFF
    assert translate(pae_sregs(), 0x4061_2345, ram, write=False, user=False) == 0x80_0021_2345
    assert ram.get(small[0], 8) == ram.get(small[0], 8) & ~ACCESSED  # PDPTEs get no accessed bit
    assert [ram.get(a, 8) & (ACCESSED | DIRTY) for a in small[1:]] == [ACCESSED, ACCESSED | DIRTY]
    assert ram.get(large[-1], 8) & ACCESSED


def test_pae_pdpte_not_present_and_reserved(ram: Ram) -> None:
    tables = PageTables(ram, ROOT, levels=3)
    entries = tables.map(0x1000, 0x1000, P | RW)
    assert fault(pae_sregs(), ram, 0x8000_0000, write=True).error_code == PF_WRITE
    ram.put(entries[0], ram.get(entries[0], 8) | RW, 8)  # R/W is reserved in a PDPTE
    assert fault(pae_sregs(), ram, 0x1000).error_code == PF_PRESENT | PF_RSVD


def legacy_sregs(*, cr4: int = 0) -> Sregs:
    return Sregs(cr0=CR0_PE | CR0_PG | CR0_WP, cr3=ROOT, cr4=cr4)


def test_legacy_32_bit_4k_page(ram: Ram) -> None:
    linear = 0xC040_5000  # PDE 0x301, PTE 5
    ram.put(ROOT + 0x301 * 4, 0x200000 | P | RW | US, 4)
    ram.put(0x200000 + 5 * 4, 0x00AB_C000 | P | US, 4)
    assert translate(legacy_sregs(), linear + 0x10, ram, write=False, user=True) == 0xABC010
    assert ram.get(ROOT + 0x301 * 4, 4) == 0x200000 | P | RW | US | ACCESSED
    assert ram.get(0x200000 + 5 * 4, 4) == 0xABC000 | P | US | ACCESSED
    assert fault(legacy_sregs(), ram, linear, write=True, user=True).error_code == PF_PRESENT | PF_WRITE | PF_USER
    assert fault(legacy_sregs(), ram, 0xC040_6000, fetch=True).error_code == 0  # no I/D bit without NX or SMEP


def test_legacy_4m_page_with_pse_and_pse36(ram: Ram) -> None:
    ram.put(ROOT + 3 * 4, 0x0080_0000 | (0x12 << 13) | P | RW | PS, 4)  # physical 0x12_0080_0000
    sregs = legacy_sregs(cr4=CR4_PSE)
    assert translate(sregs, 0x00C1_2345, ram, write=True, user=False) == 0x12_0081_2345
    assert ram.get(ROOT + 3 * 4, 4) & (ACCESSED | DIRTY) == ACCESSED | DIRTY
    ram.put(ROOT + 3 * 4, 0x0080_0000 | (1 << 21) | P | PS, 4)
    assert fault(sregs, ram, 0x00C0_0000).error_code == PF_PRESENT | PF_RSVD


def test_legacy_ps_bit_is_ignored_without_cr4_pse(ram: Ram) -> None:
    ram.put(ROOT, 0x200000 | P | RW | PS, 4)
    ram.put(0x200000 + 4, 0x5000 | P | RW, 4)
    assert translate(legacy_sregs(), 0x1010, ram, write=False, user=False) == 0x5010


# --- protection -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("write", "user", "fetch", "code"),
    [
        (False, False, False, 0),
        (True, False, False, PF_WRITE),
        (True, True, False, PF_WRITE | PF_USER),
        (False, True, True, PF_USER | PF_FETCH),
    ],
)
def test_not_present_error_codes(ram: Ram, write: bool, user: bool, fetch: bool, code: int) -> None:
    PageTables(ram, ROOT).map(0x1000, 0x1000, P | RW | US)
    sregs = long_sregs(efer=EFER_NXE)
    assert fault(sregs, ram, 0x2000, write=write, user=user, fetch=fetch).error_code == code  # PTE not present
    assert fault(sregs, ram, 0x40_0000_0000, write=write, user=user, fetch=fetch).error_code == code  # PML4E


def test_user_access_to_supervisor_page(ram: Ram) -> None:
    tables = PageTables(ram, ROOT)
    tables.map(0x1000, 0x1000, P | RW)
    assert fault(long_sregs(), ram, 0x1000, user=True).error_code == PF_PRESENT | PF_USER
    assert fault(long_sregs(), ram, 0x1000, user=True, write=True).error_code == PF_PRESENT | PF_WRITE | PF_USER
    entries = tables.map(0x2000, 0x2000, P | RW | US)
    ram.put(entries[1], ram.get(entries[1], 8) & ~US, 8)  # a supervisor PDPTE denies the whole 1 GiB
    assert fault(long_sregs(), ram, 0x2000, user=True).error_code == PF_PRESENT | PF_USER


def test_read_only_page_and_cr0_wp(ram: Ram) -> None:
    PageTables(ram, ROOT).map(0x1000, 0x1000, P | US)
    assert fault(long_sregs(), ram, 0x1000, write=True).error_code == PF_PRESENT | PF_WRITE
    no_wp = long_sregs(cr0=CR0_PE | CR0_PG)
    assert translate(no_wp, 0x1000, ram, write=True, user=False) == 0x1000  # supervisor ignores R/W without WP
    assert fault(no_wp, ram, 0x1000, write=True, user=True).error_code == PF_PRESENT | PF_WRITE | PF_USER


def test_no_execute(ram: Ram) -> None:
    PageTables(ram, ROOT).map(0x1000, 0x1000, P | RW | US | NX)
    nxe = long_sregs(efer=EFER_NXE)
    assert translate(nxe, 0x1000, ram, write=False, user=True) == 0x1000  # data reads are fine
    assert fault(nxe, ram, 0x1000, fetch=True).error_code == PF_PRESENT | PF_FETCH
    assert fault(nxe, ram, 0x1000, fetch=True, user=True).error_code == PF_PRESENT | PF_USER | PF_FETCH
    # Without EFER.NXE bit 63 is reserved.
    assert fault(long_sregs(), ram, 0x1000).error_code == PF_PRESENT | PF_RSVD


def test_smep_and_smap(ram: Ram) -> None:
    PageTables(ram, ROOT).map(0x1000, 0x1000, P | RW | US)
    smep = long_sregs(cr4=CR4_SMEP)
    assert fault(smep, ram, 0x1000, fetch=True).error_code == PF_PRESENT | PF_FETCH
    assert translate(smep, 0x1000, ram, write=False, user=True, fetch=True) == 0x1000
    smap = long_sregs(cr4=CR4_SMAP)
    assert fault(smap, ram, 0x1000).error_code == PF_PRESENT
    assert fault(smap, ram, 0x1000, write=True).error_code == PF_PRESENT | PF_WRITE
    assert translate(smap, 0x1000, ram, write=True, user=False, ac=True) == 0x1000


@pytest.mark.parametrize(
    ("level", "bits"),
    [(0, PS), (3, 1 << 40), (3, 1 << 51), (2, 1 << 45)],
    ids=["pml4e-ps", "pte-bit40", "pte-bit51", "pde-bit45"],
)
def test_reserved_bits(ram: Ram, level: int, bits: int) -> None:
    entries = PageTables(ram, ROOT).map(0x1000, 0x1000, P | RW)
    ram.put(entries[level], ram.get(entries[level], 8) | bits, 8)
    assert fault(long_sregs(), ram, 0x1000, write=True).error_code == PF_PRESENT | PF_WRITE | PF_RSVD


def test_reserved_bits_of_large_pages(ram: Ram) -> None:
    tables = PageTables(ram, ROOT)
    tables.map(0x200000, 0x200000 | (1 << 13), P, size=0x200000)
    tables.map(0x40000000, 0x40000000 | (1 << 29), P, size=0x40000000)
    tables.map(0x400000, 0x400000 | (1 << 12), P, size=0x200000)  # bit 12 is PAT: allowed
    assert fault(long_sregs(), ram, 0x200000).error_code == PF_PRESENT | PF_RSVD
    assert fault(long_sregs(), ram, 0x40000000).error_code == PF_PRESENT | PF_RSVD
    assert translate(long_sregs(), 0x400000, ram, write=False, user=False) == 0x400000


def test_unbacked_page_table_propagates_not_found(ram: Ram) -> None:
    with pytest.raises(NotFound):
        translate(long_sregs(cr3=0x4000_0000), 0x1000, ram, write=False, user=False)


def test_page_fault_pickles() -> None:
    copy = pickle.loads(pickle.dumps(PageFault(PF_WRITE, 0x1234)))
    assert (copy.vector, copy.error_code, copy.linear) == (14, PF_WRITE, 0x1234)


# --- read_linear / write_linear -------------------------------------------------------------------


def test_accesses_split_at_page_boundaries(ram: Ram) -> None:
    tables = PageTables(ram, ROOT)
    tables.map(0x7000, 0x30000, P | RW)
    tables.map(0x8000, 0x10000, P | RW)
    write_linear(long_sregs(), ram, 0x7FFC, bytes(range(1, 9)))
    assert ram.memory.read(0x30FFC, 4) == bytes([1, 2, 3, 4])
    assert ram.memory.read(0x10000, 4) == bytes([5, 6, 7, 8])
    assert read_linear(long_sregs(), ram, 0x7FFE, 4) == bytes([3, 4, 5, 6])


def test_write_linear_writes_nothing_when_a_later_page_faults(ram: Ram) -> None:
    tables = PageTables(ram, ROOT)
    tables.map(0x7000, 0x30000, P | RW)
    tables.map(0x8000, 0x10000, P)  # read-only
    with pytest.raises(PageFault) as info:
        write_linear(long_sregs(), ram, 0x7FFC, b"\xff" * 8)
    assert (info.value.error_code, info.value.linear) == (PF_PRESENT | PF_WRITE, 0x8000)
    assert ram.memory.read(0x30FFC, 4) == bytes(4)
