"""The DSDT's processors and their hotplug methods, over QEMU's "modern" CPU hotplug registers.

One ``Device(Cnnn)`` (``ACPI0007``, ``_UID`` n) per possible vCPU under ``\\_SB``, with ``_STA``
read from the register block (:class:`~hvcore.vmm.devices.cpu_hotplug.CpuHotplug`), a ``_MAT``
(its MADT local APIC entry, enabled: Linux takes a hot-added CPU's APIC ID from it, as the
MADT lists an absent CPU disabled) and, except for vCPU 0, ``_EJ0``. ``\\_GPE._E02`` (the GPE
bit :data:`~hvcore.vmm.devices.cpu_hotplug.CPU_HOTPLUG_GPE`) runs ``\\_SB.CSCN``, which asks the
registers for each CPU with an event and notifies it: ``Notify(Cnnn, 1)`` (device check) for an
insert, ``Notify(Cnnn, 3)`` (eject request) for a removal the VMM asked for. In ASL::

    OperationRegion (PRST, SystemIO, 0x0CD8, 0x0C)
    Field (PRST, DWordAcc, NoLock, WriteAsZeros) { CSEL, 32, Offset (0x08), CDAT, 32 }
    Field (PRST, ByteAcc, NoLock, WriteAsZeros) { Offset (0x04), CPEN, 1, CINS, 1, CRMV, 1, CEJ0, 1, , 4, CCMD, 8 }
    Mutex (CPLK, 0x00)
    Method (CSTA, 1, Serialized) { Acquire (CPLK, 0xFFFF); CSEL = Arg0; Local0 = Zero
                                   If ((CPEN == One)) { Local0 = 0x0F }; Release (CPLK); Return (Local0) }
    Method (CEJ_, 1, Serialized) { Acquire (CPLK, 0xFFFF); CSEL = Arg0; CEJ0 = One; Release (CPLK) }
    Device (C001) { Name (_HID, "ACPI0007"); Name (_UID, One); Method (_STA) { Return (CSTA (One)) }
                    Name (_MAT, Buffer () {...}); Method (_EJ0, 1) { CEJ_ (One) } }
    Method (CNFY, 2) { If ((Arg0 == Zero)) { Notify (C000, Arg1) } ... }
    Method (CSCN, 0, Serialized) { Acquire (CPLK, 0xFFFF); Local0 = One
        While ((Local0 == One)) { Local0 = Zero; CCMD = Zero; Local1 = CDAT
            If ((CINS == One)) { CNFY (Local1, One); CINS = One; Local0 = One }
            If ((CRMV == One)) { CNFY (Local1, 0x03); CRMV = One; Local0 = One } }
        Release (CPLK) }
    Scope (\\_GPE) { Method (_E02) { \\_SB.CSCN () } }

(``CINS = One`` writes 0x02, the other bits as zeros: it clears the insert event.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hvcore.vmm.acpi import aml
from hvcore.vmm.devices.cpu_hotplug import CPU_HOTPLUG_GPE, CpuHotplug, Gpe0Block

__all__ = ["AcpiCpuHotplug", "cpu_devices", "gpe_methods"]

_STA_PRESENT = 0x0F  # present, enabled, shown in the UI, functioning
_DEVICE_CHECK, _EJECT_REQUEST = 1, 3
_FIELD_UPDATE = aml.FieldUpdate.WRITE_AS_ZEROS


@dataclass(frozen=True)
class AcpiCpuHotplug:
    """Where the CPU hotplug registers and the GPE0 block are, and the GPE bit of a hotplug event: what
    the FADT (``GPE0_BLK``) and the DSDT (``PRST``, ``\\_GPE._Exx``) point at."""

    registers: int = CpuHotplug.PORT
    """The register block's first port (12 ports)."""
    gpe0: int = Gpe0Block.PORT
    """The GPE0 block's first port: status bytes, then enable bytes."""
    gpe0_length: int = Gpe0Block.LENGTH
    """Ports in the GPE0 block (``GPE0_BLK_LEN``)."""
    gpe: int = CPU_HOTPLUG_GPE
    """The GPE bit a hotplug event sets."""


def _cpu(index: int) -> str:
    return f"C{index:03X}"


def _madt_lapic(index: int) -> bytes:
    """The MADT local APIC entry for vCPU ``index`` (its APIC ID is its index), enabled."""
    return struct.pack("<BBBBI", 0, 8, index, index, 1)


def cpu_devices(cpus: int, hotplug: AcpiCpuHotplug) -> list[bytes]:
    """What goes in ``\\_SB``: the registers, the lock, ``CSTA``/``CEJ_``, a device per possible vCPU,
    ``CNFY`` and ``CSCN`` (see the module docstring)."""
    region = aml.operation_region("PRST", aml.RegionSpace.SYSTEM_IO, hotplug.registers, CpuHotplug.LENGTH)
    words = aml.field("PRST", ("CSEL", 32), ("", 32), ("CDAT", 32), access=aml.FieldAccess.DWORD, update=_FIELD_UPDATE)
    flags = aml.field(
        "PRST",
        ("", 32),
        ("CPEN", 1),
        ("CINS", 1),
        ("CRMV", 1),
        ("CEJ0", 1),
        ("", 4),
        ("CCMD", 8),
        access=aml.FieldAccess.BYTE,
        update=_FIELD_UPDATE,
    )
    select = aml.store(aml.arg(0), aml.reference("CSEL"))
    status = aml.method(
        "CSTA",
        1,
        aml.acquire("CPLK"),
        select,
        aml.store(aml.ZERO, aml.local(0)),
        aml.if_(aml.lequal(aml.reference("CPEN"), aml.ONE), aml.store(aml.integer(_STA_PRESENT), aml.local(0))),
        aml.release("CPLK"),
        aml.return_(aml.local(0)),
        serialized=True,
    )
    eject = aml.method(
        "CEJ_",
        1,
        aml.acquire("CPLK"),
        select,
        aml.store(aml.ONE, aml.reference("CEJ0")),
        aml.release("CPLK"),
        serialized=True,
    )
    devices = [_cpu_device(index) for index in range(cpus)]
    notify = aml.method(
        "CNFY",
        2,
        *(
            aml.if_(aml.lequal(aml.arg(0), aml.integer(index)), aml.notify(aml.reference(_cpu(index)), aml.arg(1)))
            for index in range(cpus)
        ),
    )
    events = [
        aml.if_(
            aml.lequal(aml.reference(flag), aml.ONE),
            aml.call("CNFY", aml.local(1), aml.integer(code)),
            aml.store(aml.ONE, aml.reference(flag)),  # writing 1 clears the event
            aml.store(aml.ONE, aml.local(0)),
        )
        for flag, code in (("CINS", _DEVICE_CHECK), ("CRMV", _EJECT_REQUEST))
    ]
    scan = aml.method(
        "CSCN",
        0,
        aml.acquire("CPLK"),
        aml.store(aml.ONE, aml.local(0)),
        aml.while_(
            aml.lequal(aml.local(0), aml.ONE),
            aml.store(aml.ZERO, aml.local(0)),
            aml.store(aml.ZERO, aml.reference("CCMD")),  # select the next CPU with an event
            aml.store(aml.reference("CDAT"), aml.local(1)),  # ... its selector
            *events,
        ),
        aml.release("CPLK"),
        serialized=True,
    )
    return [region, words, flags, aml.mutex("CPLK"), status, eject, *devices, notify, scan]


def _cpu_device(index: int) -> bytes:
    terms = [
        aml.name("_HID", aml.string("ACPI0007")),
        aml.name("_UID", aml.integer(index)),
        aml.method("_STA", 0, aml.return_(aml.call("CSTA", aml.integer(index)))),
        aml.name("_MAT", aml.buffer(_madt_lapic(index))),
    ]
    if index:  # the bootstrap processor stays
        terms.append(aml.method("_EJ0", 1, aml.call("CEJ_", aml.integer(index))))
    return aml.device(_cpu(index), *terms)


def gpe_methods(hotplug: AcpiCpuHotplug) -> bytes:
    """``Scope(\\_GPE) { Method(_Exx) { \\_SB.CSCN() } }``: the hotplug GPE, edge-triggered, scans."""
    return aml.scope("\\_GPE", aml.method(f"_E{hotplug.gpe:02X}", 0, aml.call("\\_SB_.CSCN")))
