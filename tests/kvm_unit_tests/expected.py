# ruff: noqa: E501  (a table: one row a test, its reasons in full)
"""The expected outcome of each kvm-unit-test per backend, and why wherever it is not a pass.

``qemu_tcg`` is what QEMU 7.2's TCG gave with the same arguments on the development host
(``ACCEL=tcg ./run_tests.sh``): the bar the simulator is held to. ``kvm`` is the development
host's KVM (nested ``kvm_pvm`` on AMD EPYC, which runs CPL0 code in its instruction emulator);
another host's KVM may differ, and the runner says where. ``needs`` names what a test requires
that hvcore does not provide at all (a QEMU machine option, a CPU model), which is the only
reason the simulator may miss a test QEMU's TCG passes. A test ``unittests.cfg`` lists but this
table does not fails the run: new upstream tests must be looked at, not silently passed over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, get_args

from tests.kvm_unit_tests.runner import Outcome

__all__ = ["EXPECTED", "Expectation"]

_OUTCOMES: Final = frozenset(get_args(Outcome)) | {"not-run"}


@dataclass(frozen=True)
class Expectation:
    """One test's expected outcomes, with the reason for each that is not a pass."""

    test: str
    qemu_tcg: str
    sim: str
    kvm: str
    why_sim: str = ""
    why_kvm: str = ""
    needs: str = ""

    def __post_init__(self) -> None:
        for backend, outcome, why in (("qemu_tcg", self.qemu_tcg, "-"), ("sim", self.sim, self.why_sim),
                                      ("kvm", self.kvm, self.why_kvm)):  # fmt: skip
            if outcome not in _OUTCOMES:
                raise ValueError(f"[{self.test}] {backend} = {outcome!r}: not one of {sorted(_OUTCOMES)}")
            if outcome != "pass" and not why:
                raise ValueError(f"[{self.test}]: {backend} is expected to {outcome}; say why (why_{backend})")

    def outcome(self, backend: str) -> str:
        """The expected outcome on ``backend`` (``"sim"`` or ``"kvm"``)."""
        return self.sim if backend == "sim" else self.kvm

    def reason(self, backend: str) -> str:
        """Why ``backend`` is not expected to pass (empty when it is)."""
        return self.why_sim if backend == "sim" else self.why_kvm


_E = Expectation
EXPECTED: Final[dict[str, Expectation]] = {
    e.test: e
    for e in (
        _E("x2apic", "fail", "timeout", "timeout", why_sim="apic.flat: every check up to test_sti_nmi passes (apic_disable, self-IPI and broadcast did not before CR8 read the TPR register itself), but test_multiple_nmi's 100,000 NMI round trips between the two vCPUs run past the timeout: the simulator's vCPUs take turns in slices of 65,521 instructions, and each hand-over costs one (test_sti_nmi's 30,000 take 45 s)", why_kvm="hangs; this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("xapic", "fail", "timeout", "timeout", why_sim="apic.flat: every check up to test_sti_nmi passes (apic_disable, self-IPI and broadcast did not before CR8 read the TPR register itself), but test_multiple_nmi's 100,000 NMI round trips between the two vCPUs run past the timeout: the simulator's vCPUs take turns in slices of 65,521 instructions, and each hand-over costs one (test_sti_nmi's 30,000 take 45 s)", why_kvm="hangs; this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("ioapic", "fail", "pass", "timeout", why_kvm="hangs after failing logical destination mode; this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("cmpxchg8b", "skip", "not-run", "not-run", why_sim="i386 only (the tree is built for x86_64)", why_kvm="i386 only (the tree is built for x86_64)"),
        _E("smptest", "pass", "pass", "pass"),
        _E("smptest3", "pass", "pass", "pass"),
        _E("vmexit_cpuid", "pass", "pass", "pass"),
        _E("vmexit_vmcall", "fail", "pass", "timeout", why_kvm="host deviation hypercall_hangs"),
        _E("vmexit_mov_from_cr8", "pass", "pass", "pass"),
        _E("vmexit_mov_to_cr8", "pass", "pass", "pass"),
        _E("vmexit_inl_pmtimer", "pass", "pass", "pass"),
        _E("vmexit_ipi", "pass", "pass", "pass"),
        _E("vmexit_ipi_halt", "pass", "pass", "pass"),
        _E("vmexit_ple_round_robin", "pass", "pass", "pass"),
        _E("vmexit_tscdeadline", "pass", "pass", "pass"),
        _E("vmexit_tscdeadline_immed", "pass", "pass", "pass"),
        _E("vmexit_cr0_wp", "pass", "pass", "pass"),
        _E("vmexit_cr4_pge", "pass", "pass", "pass"),
        _E("access", "fail", "timeout", "error", why_sim="millions of page walks over every PTE combination: longer than its 90 s at the simulator's speed (QEMU's TCG times out too)", why_kvm="emulation failure (INTERNAL_ERROR): this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("access_fep", "skip", "not-run", "not-run", why_sim="manual-only (nodefault group), as kvm-unit-tests' own runner", why_kvm="manual-only (nodefault group), as kvm-unit-tests' own runner"),
        _E("access-reduced-maxphyaddr", "skip", "timeout", "error", why_sim="millions of page walks over every PTE combination: longer than its 90 s at the simulator's speed", why_kvm="emulation failure: this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("smap", "pass", "pass", "error", why_kvm="emulation failure: this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("pku", "pass", "pass", "skip", why_kvm="the host's supported CPUID lists no PKU"),
        _E("pks", "pass", "skip", "skip", why_sim="PKS: QEMU 5.0's TCG (the simulator's engine) has none, and the test skips; QEMU 7.2's -cpu max has it", why_kvm="no PKS", needs="PKS"),
        _E("asyncpf", "skip", "skip", "timeout", why_sim="async page faults are not modelled (the test skips without them)", why_kvm="times out; this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("emulator", "fail", "fail", "fail", why_sim="fails; not investigated yet (QEMU's TCG fails it too)", why_kvm="fails; this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("eventinj", "pass", "pass", "error", why_kvm="int3 at CPL0 is an emulation failure: this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("hypercall", "fail", "pass", "timeout", why_kvm="host deviation hypercall_hangs"),
        _E("idt_test", "fail", "pass", "pass"),
        _E("memory", "pass", "pass", "error", why_kvm="emulation failure: this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("msr", "fail", "pass", "fail", why_kvm="host deviation speculation_msrs_unchecked: RDMSR of SPEC_CTRL and WRMSR of SPEC_CTRL, PRED_CMD and FLUSH_CMD without their CPUID bits give no #GP (6 of 1904 checks)"),
        _E("msr64", "fail", "pass", "fail", why_kvm="host deviation speculation_msrs_unchecked: RDMSR of SPEC_CTRL and WRMSR of SPEC_CTRL, PRED_CMD and FLUSH_CMD without their CPUID bits give no #GP (6 of 1904 checks)"),
        _E("pmu", "skip", "fail", "timeout", why_sim="no PMU: the simulator offers no performance counters (CPUID leaf 0xA)", why_kvm="times out; this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("pmu_lbr", "skip", "skip", "skip", why_sim="no PMU", why_kvm="no LBR"),
        _E("pmu_pebs", "skip", "skip", "skip", why_sim="no PMU", why_kvm="no PEBS"),
        _E("vmware_backdoors", "skip", "fail", "fail", why_sim="needs the VMware backdoor ports (QEMU's -machine vmport=on, a KVM-only test)", why_kvm="needs the VMware backdoor ports"),
        _E("realmode", "pass", "pass", "pass"),
        _E("s3", "fail", "fail", "fail", why_sim="needs a FACS and S3: hvcore's ACPI tables reach bzImages and firmware, not a multiboot kernel, and have neither", why_kvm="needs ACPI tables and S3"),
        _E("setjmp", "pass", "pass", "pass"),
        _E("sieve", "pass", "pass", "timeout", why_kvm="slower than its timeout in the emulator; this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("syscall", "pass", "pass", "fail", why_kvm="host deviation syscall_from_cpl3"),
        _E("tsc", "pass", "pass", "skip", why_kvm="the test skips (no invariant TSC / RDTSCP listed)"),
        _E("tsc_adjust", "skip", "skip", "fail", why_sim="IA32_TSC_ADJUST is not listed in the simulator's CPUID (the test skips)", why_kvm="one check fails on this host"),
        _E("xsave", "pass", "pass", "error", why_kvm="emulation failure (xsave at CPL0): this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("rmap_chain", "pass", "pass", "pass"),
        _E("svm", "fail", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested SVM on this host"),
        _E("svm_unsupported_instruction_intercept_test", "fail", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested SVM"),
        _E("svm_no_npt", "fail", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested SVM"),
        _E("svm_pause_filter", "skip", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested SVM"),
        _E("svm_npt", "fail", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested SVM"),
        _E("taskswitch", "skip", "not-run", "not-run", why_sim="i386 only", why_kvm="i386 only"),
        _E("taskswitch2", "skip", "not-run", "not-run", why_sim="i386 only", why_kvm="i386 only"),
        _E("kvmclock_test", "skip", "timeout", "timeout", why_sim="10 million kvmclock reads at ~7 us each (the simulator's RDTSC handler): ~1,300 s; with 100,000 loops it passes in 27 s", why_kvm="slower than its timeout; this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("pcid-enabled", "fail", "pass", "error", why_kvm="emulation failure: this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("pcid-disabled", "fail", "pass", "error", why_kvm="emulation failure: this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("pcid-asymmetric", "fail", "pass", "error", why_kvm="emulation failure: this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("rdpru", "pass", "pass", "error", why_kvm="emulation failure: this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("umip", "pass", "pass", "fail", why_kvm="fails; this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("la57", "fail", "fail", "pass", why_sim="4 of 52 checks fail; not investigated yet (QEMU's TCG fails it too)"),
        _E("vmx", "skip", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested VMX on this host"),
        _E("ept", "skip", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested VMX on this host"),
        _E("ept-mbec", "skip", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested VMX on this host"),
        _E("vmx_eoi_bitmap_ioapic_scan", "skip", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested VMX on this host"),
        _E("vmx_hlt_with_rvi_test", "skip", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested VMX on this host"),
        _E("vmx_apicv_test", "skip", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested VMX on this host"),
        _E("vmx_posted_intr_test", "skip", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested VMX on this host"),
        _E("vmx_apic_passthrough_thread", "skip", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested VMX on this host"),
        _E("vmx_init_signal_test", "skip", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested VMX on this host"),
        _E("vmx_sipi_signal_test", "skip", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested VMX on this host"),
        _E("vmx_apic_passthrough_tpr_threshold_test", "skip", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested VMX on this host"),
        _E("vmx_vmcs_shadow_test", "skip", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested VMX on this host"),
        _E("vmx_pf_exception_test", "skip", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested VMX on this host"),
        _E("vmx_pf_exception_test_fep", "skip", "not-run", "not-run", why_sim="manual-only (nodefault group), as kvm-unit-tests' own runner", why_kvm="manual-only (nodefault group), as kvm-unit-tests' own runner"),
        _E("vmx_pf_vpid_test", "skip", "not-run", "not-run", why_sim="manual-only (nodefault group), as kvm-unit-tests' own runner", why_kvm="manual-only (nodefault group), as kvm-unit-tests' own runner"),
        _E("vmx_pf_invvpid_test", "skip", "not-run", "not-run", why_sim="manual-only (nodefault group), as kvm-unit-tests' own runner", why_kvm="manual-only (nodefault group), as kvm-unit-tests' own runner"),
        _E("vmx_pf_no_vpid_test", "skip", "not-run", "not-run", why_sim="manual-only (nodefault group), as kvm-unit-tests' own runner", why_kvm="manual-only (nodefault group), as kvm-unit-tests' own runner"),
        _E("vmx_pf_exception_test_reduced_maxphyaddr", "skip", "skip", "skip", why_sim="no nested virtualization", why_kvm="no nested VMX on this host"),
        _E("debug", "fail", "timeout", "timeout", why_sim="hangs; not investigated yet (QEMU's TCG times out too)", why_kvm="times out; this host's KVM (kvm_pvm) runs CPL0 code in its instruction emulator"),
        _E("hyperv_synic", "skip", "skip", "skip", why_sim="no Hyper-V enlightenments", why_kvm="the test skips (hv_passthrough: a -cpu host option hvcore does not honour)"),
        _E("hyperv_connections", "skip", "skip", "skip", why_sim="no Hyper-V enlightenments", why_kvm="the test skips (hv_passthrough: a -cpu host option hvcore does not honour)"),
        _E("hyperv_stimer", "skip", "skip", "skip", why_sim="no Hyper-V enlightenments", why_kvm="the test skips (hv_passthrough: a -cpu host option hvcore does not honour)"),
        _E("hyperv_stimer_direct", "skip", "skip", "skip", why_sim="no Hyper-V enlightenments", why_kvm="the test skips (hv_passthrough: a -cpu host option hvcore does not honour)"),
        _E("hyperv_clock", "skip", "skip", "skip", why_sim="no Hyper-V enlightenments", why_kvm="the test skips (hv_passthrough: a -cpu host option hvcore does not honour)"),
        _E("intel_iommu", "pass", "fail", "fail", why_sim="needs QEMU's q35 machine with an Intel IOMMU and the edu PCI device: hvcore's PCI is an i440FX without either", why_kvm="needs q35, intel-iommu, edu (PCI)", needs="q35, intel-iommu, edu (PCI)"),
        _E("tsx-ctrl", "skip", "skip", "skip", why_sim="no TSX", why_kvm="no TSX"),
        _E("cet", "skip", "skip", "skip", why_sim="no CET in the engine", why_kvm="no CET"),
        _E("lam", "skip", "fail", "fail", why_sim="2 of 16 checks fail; not investigated yet (QEMU's TCG skips it)", why_kvm="2 checks fail on this host"),
    )
}
"""Measured on the development host (AMD EPYC, nested kvm_pvm), each backend and QEMU 7.2's TCG with the tests'
own timeouts."""
