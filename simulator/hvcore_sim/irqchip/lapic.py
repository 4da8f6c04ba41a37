"""A vCPU's local APIC, xAPIC and x2APIC, as KVM's in-kernel model (``arch/x86/kvm/lapic.c``) behaves.

The registers live in a 1 KiB page laid out as ``KVM_GET_LAPIC`` returns it (4-byte registers on
16-byte strides); in xAPIC mode the guest reaches them through the 4 KiB MMIO window at
``apic_base & 0xfffff000``, in x2APIC mode through MSRs 0x800-0x8ff (:meth:`LocalApic.msr_read`).

KVM's rules reproduced here:

- MMIO: only aligned 4-byte writes count; reads may be 1, 2 or 4 bytes within one register.
  Write-only, reserved and out-of-range registers read 0 (KVM leaves the buffer untouched) and
  ignore writes. A hardware-disabled APIC (IA32_APIC_BASE bit 11 clear) reads all ones and
  ignores writes (KVM's ``LAPIC_MMIO_HOLE`` quirk, on by default).
- Version 0x50014: version 0x14, 6 LVT entries (no CMCI), and no EOI-broadcast suppression
  (bit 24) because the IOAPIC is in-kernel, so SVR bit 12 cannot be set by the guest.
- PPR is TPR when TPR's class is at least the highest in-service vector's, else that vector's
  class. An IRR vector is deliverable when its class is above PPR (compared with all 8 PPR bits).
- EOI clears the highest ISR bit and, if that vector's TMR bit is set (level), calls
  ``eoi_broadcast`` unless SVR bit 12 (directed EOI) is set.
- Software disable (SVR bit 8 clear) masks every LVT and keeps them masked on writes; fixed and
  lowest-priority interrupts are refused while software- or hardware-disabled. NMI, INIT and
  SIPI are always accepted. ESR stays 0 (KVM records no APIC errors).
- ICR: a write sends the IPI at once (``send``) and the delivery-status bit reads 0.
- Remote read (delivery mode 3, ``APIC_DM_REMRD``) is KVM's paravirtual kick: from an ICR write or
  the KICK_CPU hypercall, it sets ``pv_unhalted``, which ends the target vCPU's HLT (even with
  IF=0, once) as ``kvm_pv_kick_cpu_op`` and ``__apic_accept_irq`` do.
- x2APIC (IA32_APIC_BASE bits 10 and 11, allowed when the vCPU's CPUID has x2APIC): the MMIO
  window reads all ones and ignores writes; MSR ``0x800 + offset / 16`` reads and writes register
  ``offset``, and anything KVM refuses (a register that does not exist or is not readable, a
  write-only or read-only one, bits 63:32 set, a reserved ICR bit, a non-zero ESR write) is #GP.
  The ID is the vCPU id (read-only), the LDR is derived from it (cluster ``id >> 4`` in bits 31:16,
  ``1 << (id & 15)`` below), there is no DFR, ICR2 or ARBPRI, the ICR is one 64-bit register with a
  32-bit destination (kept in the page's ICR and ICR2 slots, as ``KVM_GET_LAPIC`` shows it), and
  SELF_IPI (0x83f) sends a fixed self-IPI. Physical destination 0xffffffff is the broadcast; an
  IOAPIC or MSI broadcast (0xff) reaches x2APIC-mode APICs too (KVM's broadcast quirk), and a
  logical destination matches cluster bits 31:16 and member bits 15:0 of the LDR.
- Timer: APIC bus cycle 1 ns, so a count lasts ``count * divide`` ns; a periodic period is at
  least 200 us (KVM's ``min_timer_period_us``). The current count is ``(ns left mod period) /
  divide`` (0 at the very instant the count is written, as KVM's formula gives). A masked LVT
  timer keeps counting without interrupting. Switching into or out of TSC-deadline mode stops
  the timer and zeroes the initial count and the deadline; TMICT writes are ignored in
  TSC-deadline mode. A divide change rescales the time left. Periods that elapsed while nobody
  called :meth:`LocalApic.advance` coalesce into one interrupt, as KVM's pending counter does.
- ``set_state`` restarts the timer from the page's current count (an expired one-shot timer,
  saved with current count 0, fires once more, as on KVM).

Left out: the CMCI LVT, KVM's lapic_timer_advance tuning, PV EOI,
Hyper-V SynIC, APICv and ``KVM_CAP_X2APIC_API`` (``KVM_GET_LAPIC`` shows an x2APIC ID shifted into
bits 31:24, as KVM without it).

One module, as KVM's ``lapic.c`` is one file: the register page, the timer and interrupt
acceptance share one state, and the model is read side by side with upstream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from hvcore.errors import InvalidArgument, StateError
from hvcore.types import Lapic
from hvcore_sim.clock import Clock
from hvcore_sim.irqchip.message import DeliveryMode, InterruptMessage, Shorthand

__all__ = ["DEFAULT_BASE", "MIN_PERIODIC_NS", "MMIO_SIZE", "VERSION", "X2APIC_MSRS", "LocalApic"]
_EMPTY_VECTOR_REGISTERS: Final = bytes(0x80)  # ISR, TMR or IRR with no bit set (8 registers, 16-byte stride)

DEFAULT_BASE: Final = 0xFEE00000
"""Guest-physical address of the APIC page after reset."""
MMIO_SIZE: Final = 0x1000
"""Size of the MMIO window."""
VERSION: Final = 0x50014
"""The version register: version 0x14, max LVT entry 5, no directed EOI (in-kernel IOAPIC)."""
MIN_PERIODIC_NS: Final = 200_000
"""KVM's ``min_timer_period_us`` (200 us): the shortest period a periodic timer runs with."""
X2APIC_MSRS: Final = range(0x800, 0x900)
"""The x2APIC MSRs: ``0x800 + offset // 16`` is the register at ``offset``."""

# Register offsets.
APIC_ID: Final = 0x20
APIC_LVR: Final = 0x30
APIC_TASKPRI: Final = 0x80
APIC_ARBPRI: Final = 0x90
APIC_PROCPRI: Final = 0xA0
APIC_EOI: Final = 0xB0
APIC_LDR: Final = 0xD0
APIC_DFR: Final = 0xE0
APIC_SPIV: Final = 0xF0
APIC_ISR: Final = 0x100
APIC_TMR: Final = 0x180
APIC_IRR: Final = 0x200
APIC_ESR: Final = 0x280
APIC_ICR: Final = 0x300
APIC_ICR2: Final = 0x310
APIC_LVTT: Final = 0x320
APIC_LVTTHMR: Final = 0x330
APIC_LVTPC: Final = 0x340
APIC_LVT0: Final = 0x350
APIC_LVT1: Final = 0x360
APIC_LVTERR: Final = 0x370
APIC_TMICT: Final = 0x380
APIC_TMCCT: Final = 0x390
APIC_TDCR: Final = 0x3E0
APIC_SELF_IPI: Final = 0x3F0

# Register bits.
SPIV_APIC_ENABLED: Final = 1 << 8
SPIV_DIRECTED_EOI: Final = 1 << 12
LVT_MASKED: Final = 1 << 16
ICR_BUSY: Final = 1 << 12
TIMER_ONESHOT: Final = 0 << 17
TIMER_PERIODIC: Final = 1 << 17
TIMER_TSCDEADLINE: Final = 2 << 17
APIC_BASE_BSP: Final = 1 << 8
APIC_BASE_X2APIC: Final = 1 << 10
APIC_BASE_ENABLE: Final = 1 << 11
APIC_BASE_ADDRESS_MASK: Final = 0xFFFFF000

_VECTOR: Final = 0xFF
_MODE: Final = 0x700
_MODE_NMI: Final = 0x400
_MODE_EXTINT: Final = 0x700
_LEVEL: Final = 1 << 15
_LVT_MASK: Final = LVT_MASKED | ICR_BUSY | _VECTOR  # KVM lets the guest write the send-pending bit
_LINT_MASK: Final = _LVT_MASK | _MODE | (1 << 13) | (1 << 14) | _LEVEL
_LVTS: Final = (APIC_LVTT, APIC_LVTTHMR, APIC_LVTPC, APIC_LVT0, APIC_LVT1, APIC_LVTERR)
_LVT_WRITE_MASK: Final = {
    APIC_LVTTHMR: _LVT_MASK | _MODE,
    APIC_LVTPC: _LVT_MASK | _MODE,
    APIC_LVT0: _LINT_MASK,
    APIC_LVT1: _LINT_MASK,
    APIC_LVTERR: _LVT_MASK,
}
_READABLE: Final = frozenset(
    {APIC_ID, APIC_LVR, APIC_TASKPRI, APIC_ARBPRI, APIC_PROCPRI, APIC_LDR, APIC_DFR, APIC_SPIV, APIC_ESR}
    | {base + 0x10 * i for base in (APIC_ISR, APIC_TMR, APIC_IRR) for i in range(8)}
    | {APIC_ICR, APIC_ICR2, *_LVTS, APIC_TMICT, APIC_TMCCT, APIC_TDCR}
)
_X2APIC_UNREADABLE: Final = frozenset({APIC_ARBPRI, APIC_DFR, APIC_ICR2})
_X2APIC_ICR_RESERVED: Final = (0xFFF << 20) | (3 << 16) | (1 << 13)
_DFR_FLAT: Final = 0xFFFFFFFF
_DFR_CLUSTER: Final = 0x0FFFFFFF
_BROADCAST: Final = 0xFF
_X2APIC_BROADCAST: Final = 0xFFFFFFFF
_X2APIC_ON: Final = APIC_BASE_ENABLE | APIC_BASE_X2APIC
_PAGE_SIZE: Final = 1024
_NS_PER_S: Final = 1_000_000_000


class LocalApic:
    """One vCPU's local APIC; ``send`` puts an IPI on the APIC bus, ``eoi_broadcast`` tells the IOAPIC.

    ``apic_id`` is the vCPU id: the xAPIC ID register starts as its low 8 bits, it is the x2APIC
    ID, and IPIs carry it as ``source``. The constructor leaves the APIC in its power-on state, as the bootstrap
    processor when ``apic_id`` is 0 (KVM's default BSP). With ``tsc_deadline=False`` the LVT
    timer mode is one bit wide, as for a guest whose CPUID lacks TSC-deadline.
    """

    def __init__(
        self,
        apic_id: int,
        clock: Clock,
        send: Callable[[InterruptMessage], int],
        eoi_broadcast: Callable[[int], None],
        tsc_hz: int = 1_000_000_000,
        *,
        tsc_deadline: bool = True,
    ) -> None:
        if apic_id < 0:
            raise InvalidArgument(f"APIC id {apic_id} must not be negative")
        if tsc_hz <= 0:
            raise InvalidArgument(f"TSC frequency {tsc_hz} Hz must be positive")
        self.apic_id = apic_id
        """The vCPU id this APIC belongs to (fixed; the guest-writable ID register may differ)."""
        self.tsc_hz = tsc_hz
        """Guest TSC frequency."""
        self.maxphyaddr = 36
        """Physical-address width; IA32_APIC_BASE bits at and above it are reserved (36 without CPUID)."""
        self.x2apic_allowed = False
        """The vCPU's CPUID has x2APIC: IA32_APIC_BASE may set X2APIC_ENABLE."""
        self.nmi_pending = False
        """An NMI arrived (IPI, IOAPIC or LINT); the vCPU loop injects it and clears the flag."""
        self.smi_pending = False
        """An SMI arrived (IPI, IOAPIC or MSI: ``kvm_inject_smi``); the vCPU loop takes it and clears the flag."""
        self.init_pending = False
        """An INIT arrived; the vCPU loop resets the vCPU (``reset(bsp, init=True)``) and clears it."""
        self.sipi_vector: int | None = None
        """The vector of a STARTUP IPI not yet taken (an INIT discards it); the vCPU loop clears it."""
        self.pv_unhalted = False
        """A paravirtual kick arrived (remote read): the vCPU's next or current HLT ends; the vCPU loop clears it."""
        self._clock = clock
        self._send = send
        self._eoi_broadcast = eoi_broadcast
        self.edge_eoi: Callable[[int], None] | None = None
        """Told of each EOI of an edge-triggered vector (KVM's ack notifiers for edge IOAPIC pins: the PIT's)."""
        self._timer_mode_mask = (3 << 17) if tsc_deadline else (1 << 17)
        self._regs = bytearray(_PAGE_SIZE)
        self._apic_base = APIC_BASE_ENABLE  # as kvm_create_lapic, before the reset below
        self._timer_mode = TIMER_ONESHOT
        self._divide = 2
        self._period = 0  # ns, 0: no one-shot/periodic timer
        self._target = 0  # clock ns the one-shot/periodic count reaches 0 (KVM's target_expiration)
        self._tscdeadline = 0  # IA32_TSC_DEADLINE in TSC-deadline mode
        self._expires: int | None = None  # clock ns the armed timer fires at; None: not armed
        self.reset(bsp=apic_id == 0)

    # -- registers ------------------------------------------------------------------------------

    def _get(self, offset: int) -> int:
        return int.from_bytes(self._regs[offset : offset + 4], "little")

    def _set(self, offset: int, value: int) -> None:
        self._regs[offset : offset + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")

    def _test_vector(self, base: int, vector: int) -> bool:
        return bool(self._get(base + 0x10 * (vector >> 5)) >> (vector & 31) & 1)

    def _set_vector(self, base: int, vector: int, on: bool) -> None:
        offset = base + 0x10 * (vector >> 5)
        bit = 1 << (vector & 31)
        self._set(offset, self._get(offset) | bit if on else self._get(offset) & ~bit)

    def _highest_vector(self, base: int) -> int:
        if self._regs[base : base + 0x80] == _EMPTY_VECTOR_REGISTERS:  # the usual case, asked on every run
            return -1
        for index in range(7, -1, -1):
            word = self._get(base + 0x10 * index)
            if word:
                return 32 * index + word.bit_length() - 1
        return -1

    @property
    def hardware_enabled(self) -> bool:
        """IA32_APIC_BASE bit 11: the APIC is on at all."""
        return bool(self._apic_base & APIC_BASE_ENABLE)

    @property
    def software_enabled(self) -> bool:
        """SVR bit 8: the guest enabled the APIC."""
        return bool(self._get(APIC_SPIV) & SPIV_APIC_ENABLED)

    @property
    def x2apic_mode(self) -> bool:
        """IA32_APIC_BASE bits 10 and 11: the APIC is in x2APIC mode (MSRs, not MMIO)."""
        return self._apic_base & _X2APIC_ON == _X2APIC_ON

    @property
    def physical_id(self) -> int:
        """The id physical destinations name (KVM's APIC map): the x2APIC id, or the xAPIC ID register's bits 31:24."""
        return self.apic_id if self.x2apic_mode else self._get(APIC_ID) >> 24

    def read(self, offset: int, size: int) -> int:
        """A guest read of ``size`` bytes at ``offset`` in the 4 KiB page (``apic_mmio_read``)."""
        _check_access(offset, size)
        if not self.hardware_enabled or self.x2apic_mode:
            return (1 << (8 * size)) - 1
        alignment = offset & 0xF
        register = offset & ~0xF
        if alignment + size > 4 or register not in _READABLE:
            return 0
        value = self._read_register(register)
        return (value >> (8 * alignment)) & ((1 << (8 * size)) - 1)

    def _read_register(self, register: int) -> int:
        if register == APIC_ARBPRI:
            return 0
        if register == APIC_TMCCT:
            return 0 if self._timer_mode == TIMER_TSCDEADLINE else self._current_count()
        if register == APIC_PROCPRI:
            self._update_ppr()
        return self._get(register)

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write; only aligned 4-byte writes to a hardware-enabled xAPIC count (``apic_mmio_write``).

        Other sizes are dropped, odd ones (a string IN's last part) included.
        """
        _check_access(offset, size, odd=True)
        if not self.hardware_enabled or self.x2apic_mode or size != 4 or offset & 0xF:
            return
        self._write_register(offset, value & 0xFFFFFFFF)

    def msr_read(self, index: int) -> int | None:
        """RDMSR of x2APIC MSR ``index`` (``kvm_x2apic_msr_read``); None where KVM refuses (#GP)."""
        register = (index - X2APIC_MSRS.start) << 4
        if index not in X2APIC_MSRS or not self.x2apic_mode:
            return None
        if register == APIC_ICR:
            return self._get(APIC_ICR) | self._get(APIC_ICR2) << 32
        if register not in _READABLE or register in _X2APIC_UNREADABLE:
            return None
        return self._read_register(register)

    def msr_write(self, index: int, value: int) -> bool:
        """WRMSR of x2APIC MSR ``index`` (``kvm_x2apic_msr_write``); False where KVM refuses (#GP)."""
        register = (index - X2APIC_MSRS.start) << 4
        if index not in X2APIC_MSRS or not self.x2apic_mode or not 0 <= value < 1 << 64:
            return False
        if register == APIC_ICR:  # one 64-bit register, the destination in bits 63:32
            if value & _X2APIC_ICR_RESERVED:
                return False
            value &= ~ICR_BUSY
            self._send_ipi(value & 0xFFFFFFFF, value >> 32)
            self._set(APIC_ICR, value)
            self._set(APIC_ICR2, value >> 32)
            return True
        if value >> 32:
            return False
        return self._write_register(register, value)

    def _write_register(self, register: int, value: int) -> bool:
        """KVM's ``kvm_lapic_reg_write``: False where it refuses the write (#GP for an x2APIC MSR)."""
        x2apic = self.x2apic_mode
        if register in (APIC_ID, APIC_LDR, APIC_DFR, APIC_ICR2) and x2apic:
            return False  # read-only (ID, LDR) or absent (DFR, ICR2) in x2APIC mode
        if register == APIC_ID:
            self._set(APIC_ID, (value >> 24) << 24)
        elif register == APIC_TASKPRI:
            self._set(APIC_TASKPRI, value & 0xFF)
            self._update_ppr()
        elif register == APIC_EOI:
            self._eoi()
        elif register == APIC_LDR:
            self._set(APIC_LDR, value & 0xFF000000)
        elif register == APIC_DFR:
            self._set(APIC_DFR, value | 0x0FFFFFFF)
        elif register == APIC_SPIV:
            mask = 0x3FF | (SPIV_DIRECTED_EOI if self._get(APIC_LVR) & (1 << 24) else 0)
            self._set(APIC_SPIV, value & mask)
            if not value & SPIV_APIC_ENABLED:
                for lvt in _LVTS:
                    self._set(lvt, self._get(lvt) | LVT_MASKED)
                self._update_lvtt()
        elif register == APIC_ICR:
            value &= ~ICR_BUSY  # delivery completes at once
            self._send_ipi(value, self._get(APIC_ICR2))
            self._set(APIC_ICR, value)
        elif register == APIC_ICR2:
            self._set(APIC_ICR2, value & 0xFF000000)
        elif register in _LVT_WRITE_MASK:
            if not self.software_enabled:
                value |= LVT_MASKED
            self._set(register, value & _LVT_WRITE_MASK[register])
        elif register == APIC_LVTT:
            if not self.software_enabled:
                value |= LVT_MASKED
            self._set(APIC_LVTT, value & (_LVT_MASK | self._timer_mode_mask))
            self._update_lvtt()
        elif register == APIC_TMICT:
            if self._timer_mode != TIMER_TSCDEADLINE:
                self._expires = None
                self._set(APIC_TMICT, value)
                self._start_timer(APIC_TMICT)
        elif register == APIC_TDCR:
            old_divide = self._divide
            self._set(APIC_TDCR, value & 0xB)
            self._update_divide()
            if self._divide != old_divide and self._period:
                self._rescale_timer(old_divide)
        elif register == APIC_ESR:  # ESR stays 0; x2APIC refuses a non-zero write
            return not (x2apic and value)
        elif register == APIC_SELF_IPI:  # x2APIC only: bits 7:0 the vector, the rest reserved
            if not x2apic or value & ~_VECTOR:
                return False
            self._send_ipi(int(Shorthand.SELF) << 18 | value, 0)
        else:
            return False  # read-only or reserved
        return True

    # -- priorities, acceptance, EOI ------------------------------------------------------------

    def _update_ppr(self) -> int:
        tpr = self._get(APIC_TASKPRI)
        isr = max(self._highest_vector(APIC_ISR), 0)
        ppr = tpr & 0xFF if (tpr & 0xF0) >= (isr & 0xF0) else isr & 0xF0
        self._set(APIC_PROCPRI, ppr)
        return ppr

    def get_cr8(self) -> int:
        """CR8 as the guest reads it: TPR bits 7:4."""
        return (self._get(APIC_TASKPRI) & 0xF0) >> 4

    def set_cr8(self, value: int) -> None:
        """A guest ``mov cr8`` (or ``kvm_run.cr8``): TPR = ``value`` bits 3:0 << 4 (``kvm_lapic_set_tpr``), the
        register itself whether or not the APIC is enabled."""
        self._set(APIC_TASKPRI, (value & 0xF) << 4)
        self._update_ppr()

    def accept(self, message: InterruptMessage) -> bool:
        """Take ``message`` into this APIC (the bus already matched the destination); True if accepted."""
        mode = message.delivery_mode
        if mode in (DeliveryMode.FIXED, DeliveryMode.LOWEST_PRIORITY):
            return self._accept_vector(message.vector, level=message.level_triggered, asserted=message.assert_level)
        if mode == DeliveryMode.NMI:
            self.nmi_pending = True
            return True
        if mode == DeliveryMode.SMI:
            self.smi_pending = True
            return True
        if mode == DeliveryMode.INIT:
            if message.level_triggered and not message.assert_level:
                return False  # INIT level de-assert
            self.init_pending = True
            self.sipi_vector = None  # KVM keeps only the INIT among pending INIT/SIPI events
            return True
        if mode == DeliveryMode.STARTUP:
            self.sipi_vector = message.vector & _VECTOR
            return True
        if mode == DeliveryMode.REMOTE_READ:
            self.pv_unhalted = True
            return True
        # ExtINT: the PIC path (accepts_pic_interrupt) handles it.
        return False

    def _accept_vector(self, vector: int, *, level: bool, asserted: bool) -> bool:
        if level and not asserted:
            return False
        if not (self.hardware_enabled and self.software_enabled):
            return False
        vector &= _VECTOR
        self._set_vector(APIC_TMR, vector, level)
        self._set_vector(APIC_IRR, vector, True)
        return True

    def matches(self, destination: int, logical: bool, *, ipi: bool = False) -> bool:
        """Whether this APIC is a target of ``destination`` in physical or logical mode (``kvm_apic_match_dest``).

        A hardware-disabled APIC matches nothing. The broadcast is 0xff in xAPIC mode and
        0xffffffff in x2APIC mode, where a 0xff that is not an IPI (``ipi``: from the IOAPIC or an
        MSI) counts as broadcast too (KVM's x2APIC broadcast quirk). Logical destinations follow
        DFR (flat: LDR bits 31:24 AND the mask; cluster: same cluster nibble and a common member
        bit) or, in x2APIC mode, the same cluster (bits 31:16) and a common member bit (15:0); as
        KVM's APIC map, they skip software-disabled APICs.
        """
        if destination < 0:
            raise InvalidArgument(f"APIC destination {destination} must not be negative")
        if not self.hardware_enabled:
            return False
        x2apic = self.x2apic_mode
        if x2apic and destination == _BROADCAST and not ipi:
            destination = _X2APIC_BROADCAST
        if destination == (_X2APIC_BROADCAST if x2apic else _BROADCAST):
            return True
        if not logical:
            if x2apic or destination > 0xFF:  # KVM's hotplug hack: an id xAPIC cannot encode is the vCPU id
                return destination == self.apic_id
            return destination == self.physical_id
        if not self.software_enabled:
            return False
        if x2apic:
            ldr = self._get(APIC_LDR)
            return ldr >> 16 == destination >> 16 and bool(ldr & destination & 0xFFFF)
        ldr = self._get(APIC_LDR) >> 24
        dfr = self._get(APIC_DFR)
        if dfr == _DFR_FLAT:
            return bool(ldr & destination)
        if dfr == _DFR_CLUSTER:
            return ldr >> 4 == destination >> 4 and bool(ldr & destination & 0xF)
        return False

    def pending_vector(self) -> int | None:
        """The highest IRR vector whose priority class is above PPR, or None (also when hardware-disabled)."""
        if not self.hardware_enabled:
            return None
        vector = self._highest_vector(APIC_IRR)
        if vector < 0 or (vector & 0xF0) <= self._update_ppr():
            return None
        return vector

    def acknowledge(self) -> int:
        """The vCPU takes the pending interrupt: its IRR bit moves to ISR, PPR rises; returns the vector."""
        vector = self.pending_vector()
        if vector is None:
            raise StateError("no interrupt is pending above the processor priority")
        self._set_vector(APIC_IRR, vector, False)
        self._set_vector(APIC_ISR, vector, True)
        self._update_ppr()
        return vector

    def _eoi(self) -> None:
        vector = self._highest_vector(APIC_ISR)
        if vector < 0:
            return
        self._set_vector(APIC_ISR, vector, False)
        self._update_ppr()
        if self._test_vector(APIC_TMR, vector):
            if not self._get(APIC_SPIV) & SPIV_DIRECTED_EOI:
                self._eoi_broadcast(vector)
        elif self.edge_eoi is not None:
            self.edge_eoi(vector)

    def _send_ipi(self, low: int, high: int) -> None:
        mode = (low >> 8) & 7
        self._send(
            InterruptMessage(
                vector=low & _VECTOR,
                delivery_mode=DeliveryMode(mode),
                destination=high if self.x2apic_mode else high >> 24,
                logical=bool(low >> 11 & 1),
                level_triggered=bool(low & _LEVEL),
                assert_level=bool(low >> 14 & 1),
                shorthand=Shorthand((low >> 18) & 3),
                source=self.apic_id,
            )
        )

    def _local_deliver(self, lvt: int) -> bool:
        value = self._get(lvt)
        mode = (value >> 8) & 7
        if not self.hardware_enabled or value & LVT_MASKED or mode == 3:
            return False
        message = InterruptMessage(
            vector=value & _VECTOR,
            delivery_mode=DeliveryMode(mode),
            level_triggered=bool(value & _LEVEL),
            assert_level=True,
        )
        return self.accept(message)

    def accepts_pic_interrupt(self) -> bool:
        """The 8259's INTR reaches this CPU: LINT0 unmasked in ExtINT mode, or the APIC hardware-disabled."""
        if not self.hardware_enabled:
            return True
        lvt0 = self._get(APIC_LVT0)
        return not lvt0 & LVT_MASKED and lvt0 & _MODE == _MODE_EXTINT

    @property
    def lint0_nmi_mode(self) -> bool:
        """LINT0 is unmasked in NMI mode: the PIT's NMI watchdog targets this APIC (KVM's ``vapics_in_nmi_mode``)."""
        return self._get(APIC_LVT0) & (_MODE | LVT_MASKED) == _MODE_NMI

    def deliver_lint0(self) -> bool:
        """Signal LINT0 through its LVT (KVM's ``kvm_apic_nmi_wd_deliver``); True if something was accepted."""
        return self._local_deliver(APIC_LVT0)

    # -- timer ----------------------------------------------------------------------------------

    def tsc(self) -> int:
        """The guest TSC now: clock nanoseconds scaled to ``tsc_hz``."""
        return self._clock.now() * self.tsc_hz // _NS_PER_S

    def _update_divide(self) -> None:
        tdcr = self._get(APIC_TDCR) & 0xF
        self._divide = 1 << ((((tdcr & 3) | ((tdcr & 8) >> 1)) + 1) & 7)

    def _clamp_period(self) -> None:
        if self._timer_mode == TIMER_PERIODIC and 0 < self._period < MIN_PERIODIC_NS:
            self._period = MIN_PERIODIC_NS

    def _update_lvtt(self) -> None:
        mode = self._get(APIC_LVTT) & self._timer_mode_mask
        if mode == self._timer_mode:
            return
        if (mode == TIMER_TSCDEADLINE) != (self._timer_mode == TIMER_TSCDEADLINE):
            self._expires = None
            self._set(APIC_TMICT, 0)
            self._period = 0
            self._tscdeadline = 0
        self._timer_mode = mode
        self._clamp_period()

    def _current_count(self) -> int:
        if self._get(APIC_TMICT) == 0 or self._period == 0:
            return 0
        remaining = max(self._target - self._clock.now(), 0)
        return (remaining % self._period) // self._divide

    def _start_timer(self, count_register: int) -> None:
        """KVM's ``__start_apic_timer``: arm from TMICT, or from TMCCT when restoring state."""
        self._expires = None
        now = self._clock.now()
        if self._timer_mode in (TIMER_ONESHOT, TIMER_PERIODIC):
            self._period = self._get(APIC_TMICT) * self._divide
            if not self._period:
                return
            self._clamp_period()
            delay = self._period
            if count_register == APIC_TMCCT:
                delay = self._get(APIC_TMCCT) * self._divide
                if delay <= 0:
                    delay = self._period if self._timer_mode == TIMER_PERIODIC else 0
                elif delay > self._period:
                    self._set(APIC_TMCCT, 0)
                    delay = self._period
            self._target = now + delay
            self._arm(self._target)
        elif self._timer_mode == TIMER_TSCDEADLINE:
            self._arm_tsc_deadline()

    def _arm(self, expires: int) -> None:
        self._expires = expires
        if expires <= self._clock.now():
            self.advance(self._clock.now())

    def _arm_tsc_deadline(self) -> None:
        if not self._tscdeadline:
            return
        # the first clock ns at which tsc() reaches the deadline
        self._arm(-(-self._tscdeadline * _NS_PER_S // self.tsc_hz))

    def _rescale_timer(self, old_divide: int) -> None:
        """A divide change while counting: the time left scales with the divisor (``update_target_expiration``)."""
        now = self._clock.now()
        self._expires = None
        self._period = self._get(APIC_TMICT) * self._divide
        self._clamp_period()
        remaining = max(self._target - now, 0) * self._divide // old_divide
        self._target = now + remaining
        # KVM restarts from the new target even after a one-shot expired (target 0): it fires again
        if self._timer_mode in (TIMER_ONESHOT, TIMER_PERIODIC) and self._period:
            self._arm(self._target)

    def deadline(self) -> int | None:
        """Clock ns at which :meth:`advance` must next run for the timer, or None when it is stopped."""
        return self._expires

    def advance(self, now: int) -> None:
        """Fire the timer if it is due at ``now``: the LVT timer vector goes to IRR unless masked."""
        if self._expires is None or now < self._expires:
            return
        self._local_deliver(APIC_LVTT)
        if self._timer_mode == TIMER_TSCDEADLINE:
            self._tscdeadline = 0
        elif self._timer_mode == TIMER_ONESHOT:
            self._target = 0
        if self._timer_mode == TIMER_PERIODIC and self._period:
            # every period that ended by now coalesces into this one interrupt
            periods = (now - self._expires) // self._period + 1
            self._expires += periods * self._period
            self._target += periods * self._period
        else:
            self._expires = None

    def read_tsc_deadline(self) -> int:
        """IA32_TSC_DEADLINE: the armed deadline in TSC-deadline mode, else 0."""
        if not self.hardware_enabled or self._timer_mode != TIMER_TSCDEADLINE:
            return 0
        return self._tscdeadline

    def write_tsc_deadline(self, value: int) -> None:
        """A guest WRMSR to IA32_TSC_DEADLINE: arms in TSC-deadline mode (0 disarms; a past deadline fires now)."""
        if not 0 <= value < 1 << 64:
            raise InvalidArgument(f"IA32_TSC_DEADLINE value {value:#x} is not a 64-bit value")
        if not self.hardware_enabled or self._timer_mode != TIMER_TSCDEADLINE:
            return
        self._expires = None
        self._tscdeadline = value
        self._arm_tsc_deadline()

    # -- IA32_APIC_BASE -------------------------------------------------------------------------

    @property
    def apic_base(self) -> int:
        """IA32_APIC_BASE."""
        return self._apic_base

    @property
    def base_address(self) -> int:
        """Guest-physical address of the MMIO page (IA32_APIC_BASE bits 31:12)."""
        return self._apic_base & APIC_BASE_ADDRESS_MASK

    def set_apic_base(self, value: int) -> None:
        """Write IA32_APIC_BASE; reserved bits or x2APIC without xAPIC raise ``InvalidArgument``.

        X2APIC_ENABLE is reserved unless :attr:`x2apic_allowed`. The caller turns the error into
        #GP for a guest WRMSR (and refuses the guest's x2APIC -> xAPIC and disabled -> x2APIC
        moves, which the host may make). Clearing bit 11 turns the APIC off (it matches no
        destination, takes no interrupt, its MMIO reads all ones) without clearing its registers,
        as KVM; setting it again reloads the xAPIC ID from the vCPU id. Entering x2APIC mode sets
        the x2APIC ID and the LDR derived from it; leaving it for xAPIC reloads the xAPIC ID.
        """
        if value == self._apic_base:
            return
        reserved = ((1 << 64) - (1 << self.maxphyaddr)) | 0x2FF | (0 if self.x2apic_allowed else APIC_BASE_X2APIC)
        if value < 0 or value & reserved:
            raise InvalidArgument(f"IA32_APIC_BASE value {value:#x} sets reserved bits")
        if value & _X2APIC_ON == APIC_BASE_X2APIC:
            raise InvalidArgument(f"IA32_APIC_BASE value {value:#x} enables x2APIC without the APIC (bit 11)")
        self._set_base(value)

    def _set_base(self, value: int) -> None:
        """KVM's ``__kvm_apic_set_base``: the ID (and the x2APIC LDR) follow mode changes."""
        old = self._apic_base
        self._apic_base = value
        if (old ^ value) & APIC_BASE_ENABLE and value & APIC_BASE_ENABLE:
            self._set(APIC_ID, (self.apic_id & 0xFF) << 24)
        if (old ^ value) & APIC_BASE_X2APIC:
            if value & APIC_BASE_X2APIC:
                self._set(APIC_ID, self.apic_id)
                self._set(APIC_LDR, _x2apic_ldr(self.apic_id))
            elif value & APIC_BASE_ENABLE:
                self._set(APIC_ID, (self.apic_id & 0xFF) << 24)

    # -- state ----------------------------------------------------------------------------------

    def get_state(self) -> Lapic:
        """``KVM_GET_LAPIC``: the register page with the current count filled in.

        In x2APIC mode the ID shows shifted into bits 31:24, as KVM without ``KVM_CAP_X2APIC_API``.
        """
        page = bytearray(self._regs)
        page[APIC_TMCCT : APIC_TMCCT + 4] = self._read_register(APIC_TMCCT).to_bytes(4, "little")
        if self.x2apic_mode:
            page[APIC_ID : APIC_ID + 4] = ((self.apic_id << 24) & 0xFFFFFFFF).to_bytes(4, "little")
        return Lapic(bytes(page))

    def set_state(self, state: Lapic) -> None:
        """``KVM_SET_LAPIC``: load the page (the version register is recomputed) and restart the timer from it.

        In x2APIC mode the ID and the LDR come from the vCPU id, whatever the page holds (as KVM).
        """
        if len(state.regs) != _PAGE_SIZE:
            raise InvalidArgument(f"LAPIC state is {_PAGE_SIZE} bytes, got {len(state.regs)}")
        self._regs[:] = state.regs
        if self.x2apic_mode:
            self._set(APIC_ID, self.apic_id)
            self._set(APIC_LDR, _x2apic_ldr(self.apic_id))
        self._set(APIC_LVR, VERSION)
        self._update_ppr()
        self._expires = None
        self._update_lvtt()
        self._update_divide()
        self._start_timer(APIC_TMCCT)
        self._set(APIC_TMCCT, 0)

    def reset(self, bsp: bool, *, init: bool = False) -> None:
        """Power-on reset, or with ``init`` the INIT reset (``kvm_lapic_reset``).

        Power-on also sets IA32_APIC_BASE to 0xfee00800 (| 0x100 for the BSP: out of x2APIC mode)
        and the xAPIC ID to the vCPU id, and clears the pending INIT and SIPI; INIT keeps both, and
        the x2APIC mode with its ID and LDR. Either way: every LVT masked (LINT0 in ExtINT mode,
        unmasked, on the BSP), DFR flat, SVR 0xff (software-disabled), TPR, LDR (xAPIC), ESR, ICR,
        divide, initial count, IRR, ISR and TMR 0, the timer stopped and any pending NMI dropped.
        """
        if not init:
            self._set_base(DEFAULT_BASE | APIC_BASE_ENABLE | (APIC_BASE_BSP if bsp else 0))
            self._set(APIC_ID, (self.apic_id & 0xFF) << 24)
            self.init_pending = False
            self.sipi_vector = None
        self._expires = None
        self._set(APIC_LVR, VERSION)
        for lvt in _LVTS:
            self._set(lvt, LVT_MASKED)
        self._update_lvtt()
        if bsp:
            self._set(APIC_LVT0, _MODE_EXTINT)  # KVM's LINT0_REENABLED quirk
        self._set(APIC_DFR, _DFR_FLAT)
        self._set(APIC_SPIV, 0xFF)
        for register in (APIC_TASKPRI, APIC_ESR, APIC_ICR, APIC_ICR2, APIC_TDCR, APIC_TMICT):
            self._set(register, 0)
        if not self.x2apic_mode:
            self._set(APIC_LDR, 0)
        for index in range(8):
            for base in (APIC_IRR, APIC_ISR, APIC_TMR):
                self._set(base + 0x10 * index, 0)
        self._update_divide()
        self._period = 0
        self._update_ppr()
        self.nmi_pending = False


def _x2apic_ldr(apic_id: int) -> int:
    """The x2APIC LDR of an APIC id (``kvm_apic_calc_x2apic_ldr``): cluster ``id >> 4`` at bit 16, bit ``id & 15``."""
    return ((apic_id >> 4) << 16 | 1 << (apic_id & 0xF)) & 0xFFFFFFFF


def _check_access(offset: int, size: int, *, odd: bool = False) -> None:
    """``odd``: any size of an MMIO access (1 to 8 bytes) is valid, not only 1, 2, 4 or 8."""
    if not 0 <= offset < MMIO_SIZE:
        raise InvalidArgument(f"LAPIC offset {offset:#x} outside its {MMIO_SIZE:#x}-byte page")
    if not (1 <= size <= 8 if odd else size in (1, 2, 4, 8)):
        raise InvalidArgument(f"LAPIC access size {size} is not 1, 2, 4 or 8")
