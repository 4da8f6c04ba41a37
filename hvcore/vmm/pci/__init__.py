"""PCI for hvcore machines: a host bridge (i440FX/PIIX3, mechanism #1 and ECAM), functions, MSI and MSI-X."""

from hvcore.vmm.pci.chipset import I440fxHostBridge, Piix3IsaBridge
from hvcore.vmm.pci.function import (
    BAR_IO,
    BAR_MEMORY32,
    BAR_MEMORY64,
    COMMAND_INTX_DISABLE,
    COMMAND_IO,
    COMMAND_MASTER,
    COMMAND_MEMORY,
    CONFIG_SIZE,
    Bar,
    PciFunction,
)
from hvcore.vmm.pci.host import CONFIG_PORT, ECAM_BASE, FIRST_PCI_GSI, IO_WINDOW, MEMORY_WINDOW, PciHost, add_pci_host
from hvcore.vmm.pci.msi import CAPABILITY_MSI, CAPABILITY_MSIX, MsiCapability, MsixCapability

__all__ = [
    "BAR_IO",
    "BAR_MEMORY32",
    "BAR_MEMORY64",
    "CAPABILITY_MSI",
    "CAPABILITY_MSIX",
    "COMMAND_INTX_DISABLE",
    "COMMAND_IO",
    "COMMAND_MASTER",
    "COMMAND_MEMORY",
    "CONFIG_PORT",
    "CONFIG_SIZE",
    "ECAM_BASE",
    "FIRST_PCI_GSI",
    "IO_WINDOW",
    "MEMORY_WINDOW",
    "Bar",
    "I440fxHostBridge",
    "MsiCapability",
    "MsixCapability",
    "PciFunction",
    "PciHost",
    "Piix3IsaBridge",
    "add_pci_host",
]
