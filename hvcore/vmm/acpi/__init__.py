"""ACPI tables the VMM builds for a direct kernel boot (:mod:`~hvcore.vmm.acpi.tables`) and their AML."""

from hvcore.vmm.acpi import aml
from hvcore.vmm.acpi.tables import AcpiCpuHotplug, AcpiDevice, AcpiPciRoot, build_acpi

__all__ = ["AcpiCpuHotplug", "AcpiDevice", "AcpiPciRoot", "aml", "build_acpi"]
