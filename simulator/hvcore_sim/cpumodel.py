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
the CPU object (:func:`hvcore_sim.internals.cpu_offsets`) and found once by calibration.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
from typing import Any, Final

from hvcore_sim import room
from hvcore_sim.internals import cpu_offsets, handle

__all__ = ["EXECUTABLE_XCR0", "XCR0_PKRU", "can_limit_xcr0", "limit_xcr0", "new_uc"]

XCR0_PKRU: Final = 1 << 9
EXECUTABLE_XCR0: Final = 0x3 | XCR0_PKRU
"""XSAVE components the engine keeps and executes: x87, SSE and PKRU (QEMU 5.0 has no AVX state)."""
# QEMU 5.0's FeatureWordArray, u64 words in FeatureWord order: FEAT_1_EDX, FEAT_1_ECX, FEAT_7_0_EBX, ...
_FEAT_7_0_ECX, _FEAT_8000_0001_EDX, _FEAT_XSAVE, _FEAT_XSAVE_COMP_LO = 3, 6, 19, 21
_SCAN: Final = 1 << 14  # bytes of the CPU object after env searched for the feature words
_OSXSAVE: Final = 1 << 27
_OSPKE: Final = 1 << 4


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


def _cpuid(uc: Any, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    from unicorn import x86_const as x

    uc.reg_write(x.UC_X86_REG_RAX, leaf)
    uc.reg_write(x.UC_X86_REG_RCX, subleaf)
    uc.emu_start(0, 0, 0, 1)
    regs = (x.UC_X86_REG_RAX, x.UC_X86_REG_RBX, x.UC_X86_REG_RCX, x.UC_X86_REG_RDX)
    eax, ebx, ecx, edx = (uc.reg_read(r) & 0xFFFFFFFF for r in regs)
    return eax, ebx, ecx, edx


def _cpuid_engine() -> tuple[Any, ctypes.Array[ctypes.c_char]]:
    import unicorn

    uc = new_uc()
    page = ctypes.create_string_buffer(0x1000)
    uc.mem_map_ptr(0, 0x1000, unicorn.UC_PROT_ALL, ctypes.addressof(page))
    ctypes.memmove(page, b"\x0f\xa2", 2)  # cpuid
    uc.ctl_exits_enabled(True)
    return uc, page


def _env(uc: Any) -> int | None:
    offsets = cpu_offsets()
    if offsets is None:
        return None
    pointer_at, env = offsets
    cpu = ctypes.c_uint64.from_address(handle(uc) + pointer_at).value
    return cpu + env if cpu else None


@functools.cache
def _features_offset() -> int | None:
    """Where ``env->features`` starts, relative to ``env``; checked by changing the XSAVE word and asking CPUID."""
    uc, _page = _cpuid_engine()
    env = _env(uc)
    if env is None:
        return None
    leaf1, leaf7 = _cpuid(uc, 1), _cpuid(uc, 7)
    xsave0, xsave1, ext = _cpuid(uc, 0xD), _cpuid(uc, 0xD, 1), _cpuid(uc, 0x80000001)
    head = struct.pack("<5Q", leaf1[3], leaf1[2] & ~_OSXSAVE, leaf7[1], leaf7[2] & ~_OSPKE, leaf7[3])
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.pread(fd, _SCAN, env)
    except OSError:
        return None
    finally:
        os.close(fd)
    found = [i for i in range(0, len(data) - 8 * 23, 8) if data[i : i + 40] == head]
    if len(found) != 1:
        return None
    words = struct.unpack_from("<23Q", data, found[0])
    if (words[_FEAT_8000_0001_EDX], words[_FEAT_XSAVE], words[_FEAT_XSAVE_COMP_LO]) != (ext[3], xsave1[0], xsave0[0]):
        return None
    cell = ctypes.c_uint64.from_address(env + found[0] + 8 * _FEAT_XSAVE_COMP_LO)
    cell.value = 0x3
    return found[0] if _cpuid(uc, 0xD)[0] == 0x3 else None


def can_limit_xcr0() -> bool:
    """Whether :func:`limit_xcr0` works with this Unicorn here (it needs ``/proc/self/mem`` to calibrate)."""
    return _features_offset() is not None


def limit_xcr0(uc: Any, allowed: int) -> bool:
    """Let the engine's XSETBV enable only ``allowed`` (and x87); False where the feature words were not found."""
    offset, env = _features_offset(), _env(uc)
    if offset is None or env is None:
        return False
    mask = (allowed | 1) & EXECUTABLE_XCR0
    ctypes.c_uint64.from_address(env + offset + 8 * _FEAT_XSAVE_COMP_LO).value = mask & 0xFFFFFFFF
    ctypes.c_uint64.from_address(env + offset + 8 * (_FEAT_XSAVE_COMP_LO + 1)).value = mask >> 32
    return True
