"""The MSR probes (hvcore.host.probes.msrs) on the real backends, and on a simulator taught each variant.

The simulator models upstream KVM, so every probe must find ``upstream`` there; patching its MSR
emulator (``hvcore_sim.msrs.MsrEmulator``) to behave as a registered variant must make the probe
name that variant, and any other behaviour must be unrecognised. The vendor and address-width rules
the probes and the simulator share (``hvcore.cpuid_rules``) are checked against literal values.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, ClassVar

import pytest

from hvcore import ClosedError, CpuidEntry, Hypervisor, cpuid_rules
from hvcore.host import UNRECOGNISED, UPSTREAM, Observation, probe_host
from hvcore.host.guest import Mode, ProbeGuest
from hvcore.host.probes import msrs
from hvcore_sim.engine import Engine
from hvcore_sim.msrs import MsrEmulator
from tests.conftest import open_or_skip
from tests.host.probe_checks import assert_recognised, assert_stable
from tests.quirks import is_simulator

NAMES = [d.name for d in msrs.DEVIATIONS]
VARIANTS = {
    "pat_unchecked": {"accepted"},
    "tsc_writes_ignored": {"ignored"},
    "noncanonical_msr_accepted": {"guest_accepted", "host_accepted", "accepted"},
    "sysenter_esp_eip": {"canonical", "low_32_bits", "unchanged", "guest_write_gp"},
    "speculation_msrs_unchecked": {"accepted"},
}
IA32_TSC, SYSENTER_ESP, SYSENTER_EIP, PAT = 0x10, 0x175, 0x176, 0x277
LSTAR, FS_BASE = 0xC0000082, 0xC0000100
MASK64 = (1 << 64) - 1


def test_the_deviations_and_their_variants() -> None:
    assert list(VARIANTS) == NAMES
    for deviation in msrs.DEVIATIONS:
        assert set(deviation.variants) == VARIANTS[deviation.name]
        assert deviation.upstream and deviation.reason and all(deviation.variants.values())


def observe(hv: Hypervisor, name: str) -> Observation:
    """Run deviation ``name``'s probe on ``hv``."""
    return probe_host(hv, [d for d in msrs.DEVIATIONS if d.name == name]).observations[name]


def test_each_probe_recognises_the_backend(hv: Hypervisor) -> None:
    """The simulator is upstream; KVM shows upstream or the registered variant, never unrecognised behaviour."""
    assert_recognised(hv, msrs.DEVIATIONS, VARIANTS)


def test_the_probes_give_the_same_answer_every_time(hv: Hypervisor) -> None:
    assert_stable(hv, msrs.DEVIATIONS, 5)


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def vcpu_mappings() -> int:
    """kvm_run mappings (``anon_inode:kvm-vcpu``) in this process."""
    with open("/proc/self/maps") as maps:
        return sum("kvm-vcpu" in line for line in maps)


class Recorded(ProbeGuest):
    """A probe guest that keeps a list of every instance, to check that each was closed."""

    made: ClassVar[list[ProbeGuest]] = []

    def __init__(self, hv: Hypervisor, code: bytes, mode: Mode = "long", **kwargs: Any) -> None:
        Recorded.made.append(self)
        super().__init__(hv, code, mode, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_each_probe_is_quick_and_releases_what_it_opens(
    hv: Hypervisor, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    probe = next(d.probe for d in msrs.DEVIATIONS if d.name == name)
    probe(hv)  # warm up (imports, the backend's first VM)
    monkeypatch.setattr(msrs, "ProbeGuest", Recorded)
    monkeypatch.setattr(Recorded, "made", [])
    gc.collect()
    fds, maps = open_fds(), vcpu_mappings()
    for _ in range(3):
        started = time.monotonic()
        probe(hv)
        assert time.monotonic() - started < 0.5
    assert len(Recorded.made) == 3  # one guest a run
    for guest in Recorded.made:
        assert guest.ram.closed
        with pytest.raises(ClosedError):
            guest.vm.memory_slots()
    gc.collect()
    assert (open_fds(), vcpu_mappings()) == (fds, maps)


class Faulting(ProbeGuest):
    """A probe guest with `ud2` at each entry point: whatever the probe expected, the guest takes #UD instead."""

    def __init__(self, hv: Hypervisor, code: bytes, mode: Mode = "long", **kwargs: Any) -> None:
        code = b"\x0f\x0b\x0f\x0b\xf4\x0f\x0b\xf4\x0f\x0b\xf4"  # ud2 at CODE, CODE + 2, CODE + 5 and CODE + 8
        super().__init__(hv, code, mode, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_a_probe_takes_no_failure_for_a_variant(hv: Hypervisor, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(msrs, "ProbeGuest", Faulting)
    observation = observe(hv, name)
    assert observation.variant == UNRECOGNISED
    assert "IoExit" in observation.detail and "data=b'\\x06'" in observation.detail  # it says what it saw: #UD


# --- the simulator, taught each variant ---------------------------------------------------------------------

Outcome = Callable[[int, bool], "int | bool | None"]
"""(value, written by the VMM) -> None: the simulator's own rules; True: accepted, nothing changes;
False: refused; an int: stored as it is."""
Rule = Callable[[int, int, bool], "int | bool | None"]
"""An outcome for each MSR index."""


@pytest.fixture
def sim() -> Iterator[Hypervisor]:
    """The simulator."""
    with open_or_skip("sim") as hypervisor:
        yield hypervisor


def teach(monkeypatch: pytest.MonkeyPatch, rule: Rule) -> None:
    """Make the simulator's MSR writes follow ``rule`` (IA32_SYSENTER_ESP/EIP read as stored, whatever the vendor)."""
    write, read = MsrEmulator.write, MsrEmulator.read

    def taught_write(
        self: MsrEmulator, engine: Engine, index: int, value: int, *, host: bool, running: bool = False
    ) -> bool:
        outcome = rule(index, value, host)
        if outcome is None:
            return write(self, engine, index, value, host=host, running=running)
        if isinstance(outcome, bool):
            return outcome
        engine.write_msr(index, outcome)
        return True

    def taught_read(self: MsrEmulator, engine: Engine, index: int, *, host: bool, running: bool = False) -> int | None:
        if index in (SYSENTER_ESP, SYSENTER_EIP):  # what was stored, without the AMD vendor's masking
            return engine.read_msr(index)
        return read(self, engine, index, host=host, running=running)

    monkeypatch.setattr(MsrEmulator, "write", taught_write)
    monkeypatch.setattr(MsrEmulator, "read", taught_read)


def announce(
    monkeypatch: pytest.MonkeyPatch, sim: Hypervisor, vendor: str | None = None, la57: bool | None = None
) -> None:
    """Make the simulator's supported CPUID name ``vendor`` and announce 5-level paging (``la57``) or not."""
    supported = sim.supported_cpuid()

    def changed(entry: CpuidEntry) -> CpuidEntry:
        if entry.function == 0 and vendor is not None:
            return cpuid_rules.vendor_leaf(vendor, entry.eax)
        if entry.function == 7 and entry.index == 0 and la57 is not None:
            ecx = entry.ecx | 1 << 16 if la57 else entry.ecx & ~(1 << 16)
            return CpuidEntry(7, 0, entry.flags, entry.eax, entry.ebx, ecx, entry.edx)
        return entry

    entries = tuple(changed(e) for e in supported)
    monkeypatch.setattr(type(sim), "supported_cpuid", lambda self: entries)


def only(index: int, outcome: Outcome) -> Rule:
    """A rule for MSR ``index`` alone."""
    return lambda i, value, host: outcome(value, host) if i == index else None


def sysenter(outcome: Outcome) -> Rule:
    """A rule for IA32_SYSENTER_ESP and EIP."""
    return lambda i, value, host: outcome(value, host) if i in (SYSENTER_ESP, SYSENTER_EIP) else None


def noncanonical(outcome: Outcome, indices: tuple[int, ...] = msrs.NONCANONICAL) -> Rule:
    """A rule for the MSRs in ``indices`` (default: all that refuse non-canonical addresses), for such values."""
    return lambda i, v, host: outcome(v, host) if i in indices and not cpuid_rules.is_canonical(v, 48) else None


def canonical48(value: int) -> int:
    """``value`` with bits 63:48 copies of bit 47."""
    return value | 0xFFFF000000000000 if value >> 47 & 1 else value & 0xFFFFFFFFFFFF


def canonical57(value: int) -> int:
    """``value`` with bits 63:57 copies of bit 56."""
    return value | 0xFE00000000000000 if value >> 56 & 1 else value & 0x01FFFFFFFFFFFFFF


def canonical_sim(value: int) -> int:
    """``value`` made canonical for the simulator's linear addresses (its CPU has LA57: 57 bits)."""
    return canonical57(value)


def guest_gp(canonical: Callable[[int], int]) -> Outcome:
    """VMX on Intel: the guest's non-canonical write raises #GP; the VMM's is made canonical."""
    return lambda v, host: canonical(v) if host or canonical(v) == v else False


TAUGHT = [
    pytest.param("pat_unchecked", only(PAT, lambda v, host: v), "accepted", id="pat-both-store"),
    pytest.param("pat_unchecked", only(PAT, lambda v, host: None if host else v), UNRECOGNISED, id="pat-guest-stores"),
    pytest.param("pat_unchecked", only(PAT, lambda v, host: v if host else None), UNRECOGNISED, id="pat-host-stores"),
    pytest.param("pat_unchecked", only(PAT, lambda v, host: v & 0xFF), UNRECOGNISED, id="pat-stores-a-byte"),
    pytest.param("tsc_writes_ignored", only(IA32_TSC, lambda v, host: True), "ignored", id="tsc-both-ignored"),
    pytest.param(
        "tsc_writes_ignored",
        only(IA32_TSC, lambda v, host: True if host else None),
        UNRECOGNISED,
        id="tsc-host-ignored",
    ),
    pytest.param(
        "tsc_writes_ignored",
        only(IA32_TSC, lambda v, host: None if host else True),
        UNRECOGNISED,
        id="tsc-guest-ignored",
    ),
    pytest.param(
        "noncanonical_msr_accepted", noncanonical(lambda v, host: None if host else v), "guest_accepted", id="nc-guest"
    ),
    pytest.param(
        "noncanonical_msr_accepted", noncanonical(lambda v, host: v if host else None), "host_accepted", id="nc-host"
    ),
    pytest.param("noncanonical_msr_accepted", noncanonical(lambda v, host: v), "accepted", id="nc-both"),
    pytest.param(
        "noncanonical_msr_accepted", noncanonical(lambda v, host: canonical48(v)), UNRECOGNISED, id="nc-made-canonical"
    ),
    pytest.param("noncanonical_msr_accepted", noncanonical(lambda v, host: True), UNRECOGNISED, id="nc-not-stored"),
    pytest.param(
        "noncanonical_msr_accepted", noncanonical(lambda v, host: v, (LSTAR,)), UNRECOGNISED, id="nc-lstar-only"
    ),
    pytest.param(
        "noncanonical_msr_accepted",
        noncanonical(lambda v, host: v if host else None, (FS_BASE,)),
        UNRECOGNISED,
        id="nc-fs-base-host-only",
    ),
    pytest.param("sysenter_esp_eip", sysenter(lambda v, host: canonical_sim(v)), UPSTREAM, id="se-canonical"),  # Intel
    pytest.param("sysenter_esp_eip", sysenter(lambda v, host: v & 0xFFFFFFFF), "low_32_bits", id="se-low-32-bits"),
    pytest.param("sysenter_esp_eip", sysenter(lambda v, host: v), "unchanged", id="se-unchanged"),
    pytest.param("sysenter_esp_eip", sysenter(guest_gp(canonical_sim)), "guest_write_gp", id="se-guest-gp"),
    pytest.param(
        "sysenter_esp_eip",
        sysenter(lambda v, host: v & 0xFFFFFFFF if host else False),
        UNRECOGNISED,
        id="se-guest-gp-host-low-32-bits",
    ),
    pytest.param("sysenter_esp_eip", sysenter(lambda v, host: None if host else v), UNRECOGNISED, id="se-guest-only"),
    pytest.param(
        "sysenter_esp_eip", sysenter(lambda v, host: v | 0xFFFFFFFF00000000), UNRECOGNISED, id="se-upper-ones"
    ),
]


@pytest.mark.parametrize(("name", "rule", "variant"), TAUGHT)
def test_the_probe_names_what_the_simulator_was_taught(
    sim: Hypervisor, monkeypatch: pytest.MonkeyPatch, name: str, rule: Rule, variant: str
) -> None:
    teach(monkeypatch, rule)
    observation = observe(sim, name)
    assert observation.variant == variant, observation.detail
    assert bool(observation.detail) == (variant != UPSTREAM)


def test_sysenter_on_an_amd_vcpu(sim: Hypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    """An AuthenticAMD vCPU: upstream keeps the low 32 bits, so 64 canonical bits are the variant ``canonical``."""
    announce(monkeypatch, sim, vendor="AuthenticAMD")
    assert observe(sim, "sysenter_esp_eip").variant == UPSTREAM
    teach(monkeypatch, sysenter(lambda v, host: canonical_sim(v)))
    assert observe(sim, "sysenter_esp_eip").variant == "canonical"
    teach(monkeypatch, sysenter(lambda v, host: v & 0xFFFFFFFF))
    assert observe(sim, "sysenter_esp_eip").variant == UPSTREAM


def test_sysenter_without_la57(sim: Hypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host without LA57 checks 48-bit addresses: the simulator's 57-bit canonical values are then unrecognised."""
    announce(monkeypatch, sim, la57=False)
    observation = observe(sim, "sysenter_esp_eip")
    assert observation.variant == UNRECOGNISED
    assert "48-bit" in observation.detail and "0x800000000010 -> 0x800000000010" in observation.detail
    teach(monkeypatch, sysenter(lambda v, host: canonical48(v)))
    assert observe(sim, "sysenter_esp_eip").variant == UPSTREAM
    teach(monkeypatch, sysenter(guest_gp(canonical48)))
    assert observe(sim, "sysenter_esp_eip").variant == "guest_write_gp"


def test_noncanonical_with_la57_uses_57_bit_values(sim: Hypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cpuid_rules.address_bits(sim.supported_cpuid()) == 57  # the simulator's CPU has LA57
    written: list[int] = []
    teach(monkeypatch, lambda i, v, host: written.append(v) if i in msrs.NONCANONICAL else None)
    assert observe(sim, "noncanonical_msr_accepted").variant == UPSTREAM  # 57-bit non-canonical: 48-bit too
    assert written and not any(cpuid_rules.is_canonical(v, 57) for v in written)


SPECULATION_MSRS = frozenset({msrs.SPEC_CTRL, msrs.PRED_CMD, msrs.FLUSH_CMD})


def teach_speculation(monkeypatch: pytest.MonkeyPatch, accepted: frozenset[int], spec_ctrl: str) -> None:
    """The guest's WRMSRs of ``accepted`` succeed; its RDMSR of IA32_SPEC_CTRL is ``"#GP"``, ``"0"`` or ``"stored"``."""
    write, read = MsrEmulator.write, MsrEmulator.read
    kept = {msrs.SPEC_CTRL: 0}

    def taught_write(
        self: MsrEmulator, engine: Engine, index: int, value: int, *, host: bool, running: bool = False
    ) -> bool:
        if index not in SPECULATION_MSRS:
            return write(self, engine, index, value, host=host, running=running)
        kept[index] = value
        return index in accepted

    def taught_read(self: MsrEmulator, engine: Engine, index: int, *, host: bool, running: bool = False) -> int | None:
        if index != msrs.SPEC_CTRL or spec_ctrl == "#GP":
            return read(self, engine, index, host=host, running=running)
        return kept[index] if spec_ctrl == "stored" else 0

    monkeypatch.setattr(MsrEmulator, "write", taught_write)
    monkeypatch.setattr(MsrEmulator, "read", taught_read)


@pytest.mark.parametrize(
    ("accepted", "spec_ctrl", "variant"),
    [
        (SPECULATION_MSRS, "0", "accepted"),
        (SPECULATION_MSRS, "#GP", UNRECOGNISED),  # written, but SPEC_CTRL cannot be read
        (SPECULATION_MSRS, "stored", UNRECOGNISED),  # kept: a host with the features would, not one without
        (SPECULATION_MSRS - {msrs.SPEC_CTRL}, "0", UNRECOGNISED),
        (frozenset({msrs.FLUSH_CMD}), "#GP", UNRECOGNISED),
        (frozenset(), "0", UNRECOGNISED),
    ],
    ids=["accepted", "spec-ctrl-unreadable", "spec-ctrl-kept", "spec-ctrl-gp", "flush-cmd-only", "read-only"],
)
def test_the_speculation_probe_names_what_the_simulator_was_taught(
    sim: Hypervisor, monkeypatch: pytest.MonkeyPatch, accepted: frozenset[int], spec_ctrl: str, variant: str
) -> None:
    teach_speculation(monkeypatch, accepted, spec_ctrl)
    observation = observe(sim, "speculation_msrs_unchecked")
    assert observation.variant == variant, observation.detail


def test_the_speculation_probe_clears_the_cpuid_features(sim: Hypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that has the features and gives them to a vCPU whose CPUID lists them is upstream."""
    features = cpuid_rules.SPECULATION_MSR_FEATURES
    entries = tuple(
        replace(e, **{r: getattr(e, r) | m for (leaf, r), m in features.items() if (leaf, 0) == (e.function, e.index)})
        for e in sim.supported_cpuid()
    )
    monkeypatch.setattr(type(sim), "supported_cpuid", lambda self: entries)
    write, read = MsrEmulator.write, MsrEmulator.read

    def listed(self: MsrEmulator) -> bool:
        return self._cpuid.has(7, 3, 26)  # SPEC_CTRL

    def taught_write(
        self: MsrEmulator, engine: Engine, index: int, value: int, *, host: bool, running: bool = False
    ) -> bool:
        if index in SPECULATION_MSRS and listed(self):
            return True
        return write(self, engine, index, value, host=host, running=running)

    def taught_read(self: MsrEmulator, engine: Engine, index: int, *, host: bool, running: bool = False) -> int | None:
        if index == msrs.SPEC_CTRL and listed(self):
            return 0
        return read(self, engine, index, host=host, running=running)

    monkeypatch.setattr(MsrEmulator, "write", taught_write)
    monkeypatch.setattr(MsrEmulator, "read", taught_read)
    assert observe(sim, "speculation_msrs_unchecked").variant == UPSTREAM


def test_without_speculation_msrs_clears_only_their_bits() -> None:
    leaf7 = CpuidEntry(7, 0, 1, ebx=1, ecx=1 << 16, edx=0xFFFFFFFF)
    entries = [leaf7, CpuidEntry(7, 1, 1, edx=0xFFFFFFFF), CpuidEntry(0x80000008, ebx=0xFFFFFFFF, eax=0x30)]
    entries.append(CpuidEntry(0x80000021, eax=0xFFFFFFFF))
    assert cpuid_rules.without_speculation_msrs(entries) == [
        replace(leaf7, edx=0xFFFFFFFF & ~(1 << 26 | 1 << 28)),
        CpuidEntry(7, 1, 1, edx=0xFFFFFFFF),  # subleaf 1: other features
        CpuidEntry(0x80000008, ebx=0xFFFFFFFF & ~(1 << 12 | 1 << 14 | 1 << 15 | 1 << 24), eax=0x30),
        CpuidEntry(0x80000021, eax=0xFFFFFFFF & ~(1 << 27)),
    ]


# --- the rules the probes and the simulator share -----------------------------------------------------------

VENDORS = {
    "GenuineIntel": False,
    "AuthenticAMD": True,
    "HygonGenuine": True,
    "CentaurHauls": False,
    "  Shanghai  ": False,
}
"""CPUID vendor -> whether KVM gives it AMD's rules."""


@pytest.mark.parametrize(("vendor", "amd"), VENDORS.items())
def test_the_vendor_rule(vendor: str, amd: bool) -> None:
    leaf = cpuid_rules.vendor_leaf(vendor, 0xD)
    assert cpuid_rules.vendor([CpuidEntry(1), leaf]) == vendor
    assert cpuid_rules.amd_compatible(vendor) is amd
    assert cpuid_rules.sysenter_esp_eip(0x0000800000000010, vendor) == (0x10 if amd else 0xFFFF800000000010)
    assert cpuid_rules.sysenter_esp_eip(0x1234800000000010, vendor, 57) == (0x10 if amd else 0x0034800000000010)
    assert cpuid_rules.sysenter_esp_eip(0xFFFF800000008000, vendor) == (0x8000 if amd else 0xFFFF800000008000)


def test_the_vendor_leaf_is_packed_as_kvm_packs_it() -> None:
    assert cpuid_rules.vendor_leaf("GenuineIntel", 0x16) == CpuidEntry(
        0, eax=0x16, ebx=0x756E6547, edx=0x49656E69, ecx=0x6C65746E
    )
    assert cpuid_rules.vendor(()) is None
    assert not cpuid_rules.amd_compatible(None)  # no CPUID: Intel's rules
    with pytest.raises(ValueError, match="12 characters"):
        cpuid_rules.vendor_leaf("AMD", 1)


def test_address_width_and_canonical_values(hv: Hypervisor) -> None:
    assert cpuid_rules.address_bits([CpuidEntry(7, 0, 1, ecx=1 << 16)]) == 57
    assert cpuid_rules.address_bits([CpuidEntry(7, 1, 1, ecx=1 << 16), CpuidEntry(7, 0, 1)]) == 48
    assert cpuid_rules.address_bits(()) == 48
    assert cpuid_rules.address_bits(hv.supported_cpuid()) == (57 if is_simulator(hv) else 48)  # this host: no LA57
    for value in (0, 0x00007FFFFFFFFFFF, 0x0000800000000000, 0xFFFF7FFFFFFFFFFF, 0xFFFF800000000000, 1 << 63, MASK64):
        assert cpuid_rules.canonical(value, 48) == canonical48(value)
        assert cpuid_rules.canonical(value, 57) == canonical57(value)
        assert cpuid_rules.is_canonical(value, 48) is (canonical48(value) == value)
    for bits in (48, 57):
        values = msrs.noncanonical_values(bits)
        assert list(values) == list(msrs.NONCANONICAL) and len(set(values.values())) == len(values)
        assert not any(
            cpuid_rules.is_canonical(v, bits) or cpuid_rules.is_canonical(v ^ 0x10, bits) for v in values.values()
        )
