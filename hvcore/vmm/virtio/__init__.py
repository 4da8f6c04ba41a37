"""virtio 1.x for hvcore machines: split virtqueues, the transports (virtio-mmio, virtio-pci), device models."""

from hvcore.vmm.virtio.block import VirtioBlock
from hvcore.vmm.virtio.console import VirtioConsole
from hvcore.vmm.virtio.device import (
    STATUS_ACKNOWLEDGE,
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FAILED,
    STATUS_FEATURES_OK,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_VERSION_1,
    VirtioDevice,
)
from hvcore.vmm.virtio.mmio import VirtioMmio, add_virtio_mmio
from hvcore.vmm.virtio.net import VirtioNet
from hvcore.vmm.virtio.net_backends import CallbackBackend, NetBackend, SocketBackend, TapBackend
from hvcore.vmm.virtio.queue import (
    MAX_QUEUE_SIZE,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_USED_F_NO_NOTIFY,
    Buffer,
    Chain,
    QueueMemory,
    SplitQueue,
)
from hvcore.vmm.virtio.rng import VirtioRng
from hvcore.vmm.virtio.transport import CONFIG_CHANGE, TRANSPORT_FEATURES, USED_BUFFER, QueueSetup, VirtioTransport

__all__ = [
    "CONFIG_CHANGE",
    "TRANSPORT_FEATURES",
    "USED_BUFFER",
    "QueueSetup",
    "VirtioTransport",
    "MAX_QUEUE_SIZE",
    "STATUS_ACKNOWLEDGE",
    "STATUS_DEVICE_NEEDS_RESET",
    "STATUS_DRIVER",
    "STATUS_DRIVER_OK",
    "STATUS_FAILED",
    "STATUS_FEATURES_OK",
    "VIRTIO_F_INDIRECT_DESC",
    "VIRTIO_F_RING_EVENT_IDX",
    "VIRTIO_F_VERSION_1",
    "VIRTQ_DESC_F_INDIRECT",
    "VIRTQ_DESC_F_NEXT",
    "VIRTQ_DESC_F_WRITE",
    "VRING_AVAIL_F_NO_INTERRUPT",
    "VRING_USED_F_NO_NOTIFY",
    "Buffer",
    "CallbackBackend",
    "Chain",
    "NetBackend",
    "QueueMemory",
    "SocketBackend",
    "SplitQueue",
    "TapBackend",
    "VirtioBlock",
    "VirtioConsole",
    "VirtioDevice",
    "VirtioMmio",
    "VirtioNet",
    "VirtioRng",
    "add_virtio_mmio",
]
