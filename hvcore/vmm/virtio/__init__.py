"""virtio 1.x for hvcore machines: split virtqueues (:mod:`hvcore.vmm.virtio.queue`)."""

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

__all__ = [
    "MAX_QUEUE_SIZE",
    "VIRTQ_DESC_F_INDIRECT",
    "VIRTQ_DESC_F_NEXT",
    "VIRTQ_DESC_F_WRITE",
    "VRING_AVAIL_F_NO_INTERRUPT",
    "VRING_USED_F_NO_NOTIFY",
    "Buffer",
    "Chain",
    "QueueMemory",
    "SplitQueue",
]
