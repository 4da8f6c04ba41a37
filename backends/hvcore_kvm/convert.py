"""hvcore.types <-> KVM uapi structs: the only place the two meet."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import fields

from hvcore.types import (
    ClockData,
    CpuidEntry,
    DebugRegs,
    DescriptorTable,
    Fpu,
    GsiRoute,
    GuestDebug,
    IoapicState,
    IrqchipRoute,
    Lapic,
    PicState,
    PitChannelState,
    PitState,
    Regs,
    Segment,
    Sregs,
    VcpuEvents,
    Xsave,
)
from hvcore_kvm import uapi

_REG_NAMES = tuple(f.name for f in fields(Regs))
_SEGMENT_NAMES = tuple(f.name for f in fields(Segment))
_SREG_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
_PIC_NAMES = tuple(f.name for f in fields(PicState))
_PIT_CHANNEL_NAMES = tuple(f.name for f in fields(PitChannelState))
_ROUTE_IRQCHIP, _ROUTE_MSI = 1, 2  # KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI


def regs_from_kvm(raw: uapi.KvmRegs) -> Regs:
    """``struct kvm_regs`` -> Regs."""
    return Regs(*(getattr(raw, n) for n in _REG_NAMES))


def regs_to_kvm(regs: Regs) -> uapi.KvmRegs:
    """Regs -> ``struct kvm_regs`` (checked by :func:`hvcore.state_checks.check_state`)."""
    return uapi.KvmRegs(*(getattr(regs, n) for n in _REG_NAMES))


def _segment_from_kvm(raw: uapi.KvmSegment) -> Segment:
    return Segment(*(getattr(raw, n) for n in _SEGMENT_NAMES))


def _segment_to_kvm(seg: Segment) -> uapi.KvmSegment:
    raw = uapi.KvmSegment()
    for n in _SEGMENT_NAMES:
        setattr(raw, n, getattr(seg, n))
    return raw


def sregs_from_kvm(raw: uapi.KvmSregs) -> Sregs:
    """``struct kvm_sregs`` -> Sregs."""
    bitmap = tuple(raw.interrupt_bitmap)
    return Sregs(
        cs=_segment_from_kvm(raw.cs),
        ds=_segment_from_kvm(raw.ds),
        es=_segment_from_kvm(raw.es),
        fs=_segment_from_kvm(raw.fs),
        gs=_segment_from_kvm(raw.gs),
        ss=_segment_from_kvm(raw.ss),
        tr=_segment_from_kvm(raw.tr),
        ldt=_segment_from_kvm(raw.ldt),
        gdt=DescriptorTable(raw.gdt.base, raw.gdt.limit),
        idt=DescriptorTable(raw.idt.base, raw.idt.limit),
        cr0=raw.cr0,
        cr2=raw.cr2,
        cr3=raw.cr3,
        cr4=raw.cr4,
        cr8=raw.cr8,
        efer=raw.efer,
        apic_base=raw.apic_base,
        interrupt_bitmap=(bitmap[0], bitmap[1], bitmap[2], bitmap[3]),
    )


def sregs_to_kvm(sregs: Sregs) -> uapi.KvmSregs:
    """Sregs -> ``struct kvm_sregs``."""
    raw = uapi.KvmSregs()
    for n in _SREG_SEGMENTS:
        setattr(raw, n, _segment_to_kvm(getattr(sregs, n)))
    raw.gdt.base, raw.gdt.limit = sregs.gdt.base, sregs.gdt.limit
    raw.idt.base, raw.idt.limit = sregs.idt.base, sregs.idt.limit
    raw.cr0, raw.cr2, raw.cr3, raw.cr4, raw.cr8 = sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.cr8
    raw.efer, raw.apic_base = sregs.efer, sregs.apic_base
    for i, word in enumerate(sregs.interrupt_bitmap):
        raw.interrupt_bitmap[i] = word
    return raw


def fpu_from_kvm(raw: uapi.KvmFpu) -> Fpu:
    """``struct kvm_fpu`` -> Fpu."""
    return Fpu(
        fpr=tuple(bytes(r) for r in raw.fpr),
        fcw=raw.fcw,
        fsw=raw.fsw,
        ftwx=raw.ftwx,
        last_opcode=raw.last_opcode,
        last_ip=raw.last_ip,
        last_dp=raw.last_dp,
        xmm=tuple(bytes(r) for r in raw.xmm),
        mxcsr=raw.mxcsr,
    )


def fpu_to_kvm(fpu: Fpu) -> uapi.KvmFpu:
    """Fpu -> ``struct kvm_fpu``."""
    raw = uapi.KvmFpu()
    for i, r in enumerate(fpu.fpr):
        ctypes.memmove(raw.fpr[i], r, 16)
    for i, r in enumerate(fpu.xmm):
        ctypes.memmove(raw.xmm[i], r, 16)
    raw.fcw, raw.fsw, raw.ftwx, raw.last_opcode = fpu.fcw, fpu.fsw, fpu.ftwx, fpu.last_opcode
    raw.last_ip, raw.last_dp, raw.mxcsr = fpu.last_ip, fpu.last_dp, fpu.mxcsr
    return raw


def xsave_from_kvm(raw: uapi.KvmXsave) -> Xsave:
    """``struct kvm_xsave`` -> Xsave."""
    return Xsave(bytes(raw)[:4096])


def xsave_to_kvm(xsave: Xsave) -> uapi.KvmXsave:
    """Xsave -> ``struct kvm_xsave``."""
    raw = uapi.KvmXsave()
    ctypes.memmove(ctypes.addressof(raw), xsave.region, min(len(xsave.region), 4096))
    return raw


def cpuid_from_kvm(raw: uapi.KvmCpuidEntry2) -> CpuidEntry:
    """``struct kvm_cpuid_entry2`` -> CpuidEntry."""
    return CpuidEntry(raw.function, raw.index, raw.flags, raw.eax, raw.ebx, raw.ecx, raw.edx)


def cpuid_to_kvm(entry: CpuidEntry, raw: uapi.KvmCpuidEntry2) -> None:
    """CpuidEntry -> an existing ``struct kvm_cpuid_entry2``."""
    raw.function, raw.index, raw.flags = entry.function, entry.index, entry.flags
    raw.eax, raw.ebx, raw.ecx, raw.edx = entry.eax, entry.ebx, entry.ecx, entry.edx


def debugregs_from_kvm(raw: uapi.KvmDebugregs) -> DebugRegs:
    """``struct kvm_debugregs`` -> DebugRegs."""
    db = tuple(raw.db)
    return DebugRegs((db[0], db[1], db[2], db[3]), raw.dr6, raw.dr7, raw.flags)


def debugregs_to_kvm(regs: DebugRegs) -> uapi.KvmDebugregs:
    """DebugRegs -> ``struct kvm_debugregs``."""
    raw = uapi.KvmDebugregs()
    for i, v in enumerate(regs.db):
        raw.db[i] = v
    raw.dr6, raw.dr7, raw.flags = regs.dr6, regs.dr7, regs.flags
    return raw


def events_from_kvm(raw: uapi.KvmVcpuEvents) -> VcpuEvents:
    """``struct kvm_vcpu_events`` -> VcpuEvents."""
    e, i, n, s = raw.exception, raw.interrupt, raw.nmi, raw.smi
    return VcpuEvents(
        exception_injected=e.injected,
        exception_nr=e.nr,
        exception_has_error_code=e.has_error_code,
        exception_pending=e.pending,
        exception_error_code=e.error_code,
        interrupt_injected=i.injected,
        interrupt_nr=i.nr,
        interrupt_soft=i.soft,
        interrupt_shadow=i.shadow,
        nmi_injected=n.injected,
        nmi_pending=n.pending,
        nmi_masked=n.masked,
        sipi_vector=raw.sipi_vector,
        flags=raw.flags,
        smi_smm=s.smm,
        smi_pending=s.pending,
        smi_inside_nmi=s.smm_inside_nmi,
        smi_latched_init=s.latched_init,
        triple_fault_pending=raw.triple_fault.pending,
        exception_has_payload=raw.exception_has_payload,
        exception_payload=raw.exception_payload,
    )


def events_to_kvm(ev: VcpuEvents) -> uapi.KvmVcpuEvents:
    """VcpuEvents -> ``struct kvm_vcpu_events``."""
    raw = uapi.KvmVcpuEvents()
    e, i, n, s = raw.exception, raw.interrupt, raw.nmi, raw.smi
    e.injected, e.nr, e.has_error_code = ev.exception_injected, ev.exception_nr, ev.exception_has_error_code
    e.pending, e.error_code = ev.exception_pending, ev.exception_error_code
    i.injected, i.nr, i.soft, i.shadow = ev.interrupt_injected, ev.interrupt_nr, ev.interrupt_soft, ev.interrupt_shadow
    n.injected, n.pending, n.masked = ev.nmi_injected, ev.nmi_pending, ev.nmi_masked
    raw.sipi_vector, raw.flags = ev.sipi_vector, ev.flags
    s.smm, s.pending, s.smm_inside_nmi, s.latched_init = (
        ev.smi_smm,
        ev.smi_pending,
        ev.smi_inside_nmi,
        ev.smi_latched_init,
    )
    raw.triple_fault.pending = ev.triple_fault_pending
    raw.exception_has_payload, raw.exception_payload = ev.exception_has_payload, ev.exception_payload
    return raw


def lapic_from_kvm(raw: uapi.KvmLapicState) -> Lapic:
    """``struct kvm_lapic_state`` -> Lapic."""
    return Lapic(bytes(raw.regs))


def lapic_to_kvm(lapic: Lapic) -> uapi.KvmLapicState:
    """Lapic -> ``struct kvm_lapic_state``."""
    raw = uapi.KvmLapicState()
    ctypes.memmove(raw.regs, lapic.regs, min(len(lapic.regs), 1024))
    return raw


def guest_debug_to_kvm(debug: GuestDebug) -> uapi.KvmGuestDebug:
    """GuestDebug -> ``struct kvm_guest_debug``."""
    raw = uapi.KvmGuestDebug()
    raw.control = int(debug.flags)
    for i, v in enumerate(debug.debugreg[:8]):
        raw.arch.debugreg[i] = v
    return raw


def clock_from_kvm(raw: uapi.KvmClockData) -> ClockData:
    """``struct kvm_clock_data`` -> ClockData."""
    return ClockData(raw.clock, raw.flags, raw.realtime, raw.host_tsc)


def pic_from_kvm(raw: uapi.KvmPicState) -> PicState:
    """``struct kvm_pic_state`` -> PicState."""
    return PicState(*(getattr(raw, n) for n in _PIC_NAMES))


def pic_to_kvm(pic: PicState, raw: uapi.KvmPicState) -> None:
    """PicState -> an existing ``struct kvm_pic_state``."""
    for n in _PIC_NAMES:
        setattr(raw, n, getattr(pic, n))


def ioapic_from_kvm(raw: uapi.KvmIoapicState) -> IoapicState:
    """``struct kvm_ioapic_state`` -> IoapicState."""
    return IoapicState(raw.base_address, raw.ioregsel, raw.id, raw.irr, tuple(raw.redirtbl))


def ioapic_to_kvm(state: IoapicState, raw: uapi.KvmIoapicState) -> None:
    """IoapicState -> an existing ``struct kvm_ioapic_state``."""
    raw.base_address, raw.ioregsel, raw.id, raw.irr = state.base_address, state.ioregsel, state.id, state.irr
    for i, v in enumerate(state.redirtbl[:24]):
        raw.redirtbl[i] = v


def pit_from_kvm(raw: uapi.KvmPitState2) -> PitState:
    """``struct kvm_pit_state2`` -> PitState."""
    channels = tuple(PitChannelState(*(getattr(c, n) for n in _PIT_CHANNEL_NAMES)) for c in raw.channels)
    return PitState((channels[0], channels[1], channels[2]), raw.flags)


def pit_to_kvm(state: PitState) -> uapi.KvmPitState2:
    """PitState -> ``struct kvm_pit_state2``."""
    raw = uapi.KvmPitState2()
    for channel, raw_channel in zip(state.channels, raw.channels, strict=True):
        for n in _PIT_CHANNEL_NAMES:
            setattr(raw_channel, n, getattr(channel, n))
    raw.flags = state.flags
    return raw


def routing_to_kvm(routes: Sequence[GsiRoute]) -> uapi.KvmIrqRouting:
    """GSI routes -> ``struct kvm_irq_routing`` with its entries."""
    raw = uapi.irq_routing_with(len(routes))()
    raw.nr = len(routes)
    for route, entry in zip(routes, raw.entries, strict=True):
        entry.gsi = route.gsi
        if isinstance(route, IrqchipRoute):
            entry.type = _ROUTE_IRQCHIP
            entry.u.irqchip.irqchip, entry.u.irqchip.pin = int(route.chip), route.pin
        else:
            entry.type = _ROUTE_MSI
            entry.u.msi.address_lo, entry.u.msi.address_hi = route.address & 0xFFFFFFFF, route.address >> 32
            entry.u.msi.data = route.data
    return raw
