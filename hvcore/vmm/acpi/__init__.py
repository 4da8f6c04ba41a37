"""ACPI tables the VMM builds for a direct kernel boot (:mod:`~hvcore.vmm.acpi.tables`) and their AML."""

from hvcore.vmm.acpi import aml
from hvcore.vmm.acpi.tables import AcpiDevice, build_acpi

__all__ = ["AcpiDevice", "aml", "build_acpi"]
