"""The processor every engine emulates: Unicorn's Icelake-Server model, as QEMU 5.0's TCG executes it.

QEMU keeps of a CPU model only the features its TCG implements (``TCG_*_FEATURES`` in
``target/i386/cpu.c``), and its translator decodes an instruction only when the engine's own
feature words have its bit, so the engine runs what its CPUID leaves 1, 7 and 0x80000001 list.
Of Unicorn's models, Icelake-Server keeps the most: on top of Haswell (Unicorn's default) it has
SMAP, ADX, CLFLUSHOPT, CLWB, PKU, LA57, 1 GiB pages and XSAVEOPT / XGETBV1. No model keeps AVX,
AVX2, FMA, F16C or AVX-512, which QEMU 5.0 cannot execute (it decodes VEX only for BMI1/BMI2).

One thing the filter misses: QEMU enables the XSAVE components of the model before filtering,
so the engine's CPUID leaf 0xD and its XSETBV still accept AVX and AVX-512 state. The simulator
lists only :data:`EXECUTABLE_XCR0`, and :func:`limit_xcr0` writes the components a vCPU may
enable into the engine's feature words, which QEMU's XSETBV checks (KVM checks the vCPU's CPUID,
``guest_supported_xcr0``). Those words are not in the context blob: they are reached through
the CPU object (:func:`hvcore_sim.unicorn_internals.set_xsave_components`), found once by calibration.
"""

from __future__ import annotations

from typing import Any, Final

from hvcore_sim import room, unicorn_internals

__all__ = ["EXECUTABLE_XCR0", "XCR0_PKRU", "can_limit_xcr0", "cpuid_engine", "limit_xcr0", "new_uc", "run_cpuid"]

XCR0_PKRU: Final = 1 << 9
EXECUTABLE_XCR0: Final = 0x3 | XCR0_PKRU
"""XSAVE components the engine keeps and executes: x87, SSE and PKRU (QEMU 5.0 has no AVX state)."""


def new_uc(operation: str = "create a simulator engine") -> Any:
    """A fresh ``UC_MODE_64`` engine of the simulator's CPU model, its translation buffer bounded.

    Raises ``ResourceExhausted`` where the address space for it cannot be had (:mod:`hvcore_sim.room`),
    before Unicorn would end the process.
    """
    import unicorn
    from unicorn import x86_const as x

    room.check(operation)
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.ctl_set_tcg_buffer_size(room.TCG_BUFFER_SIZE)  # before anything initialises the engine
    uc.ctl_set_cpu_model(x.UC_CPU_X86_ICELAKE_SERVER)
    room.engine_made(uc)
    return uc


def run_cpuid(uc: Any, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """EAX, EBX, ECX, EDX of CPUID ``leaf`` / ``subleaf`` on a :func:`cpuid_engine`."""
    from unicorn import x86_const as x

    uc.reg_write(x.UC_X86_REG_RAX, leaf)
    uc.reg_write(x.UC_X86_REG_RCX, subleaf)
    uc.emu_start(0, 0, 0, 1)
    regs = (x.UC_X86_REG_RAX, x.UC_X86_REG_RBX, x.UC_X86_REG_RCX, x.UC_X86_REG_RDX)
    eax, ebx, ecx, edx = (uc.reg_read(r) & 0xFFFFFFFF for r in regs)
    return eax, ebx, ecx, edx


def cpuid_engine() -> Any:
    """A fresh engine of the model with a CPUID at address 0 (:func:`run_cpuid` runs it)."""
    import unicorn

    uc = new_uc()
    uc.mem_map(0, 0x1000, unicorn.UC_PROT_ALL)
    uc.mem_write(0, b"\x0f\xa2")  # cpuid
    uc.ctl_exits_enabled(True)
    return uc


def can_limit_xcr0() -> bool:
    """Whether :func:`limit_xcr0` works with this Unicorn here (it needs ``/proc/self/mem`` to calibrate)."""
    return unicorn_internals.xsave_components_found()


def limit_xcr0(uc: Any, allowed: int) -> bool:
    """Let the engine's XSETBV enable only ``allowed`` (and x87); False where the feature words were not found."""
    return unicorn_internals.set_xsave_components(uc, (allowed | 1) & EXECUTABLE_XCR0)
