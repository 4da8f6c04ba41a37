"""virtio-rng (entropy device, ID 4; virtio spec 1.2, section 5.4): random bytes into every buffer the driver offers."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from hvcore.vmm.virtio.queue import SplitQueue

__all__ = ["VirtioRng"]

_MOST_PER_REQUEST: Final = 1 << 16  # bytes per chain: a guest asking for 4 GiB gets this much


class VirtioRng:
    """An entropy source: one queue, each device-writable chain filled from ``source`` (``os.urandom``)."""

    device_id = 4
    features = 0

    def __init__(
        self, name: str = "virtio-rng", source: Callable[[int], bytes] = os.urandom, queue_size: int = 64
    ) -> None:
        self.name = name
        self.source = source
        self.queue_sizes: tuple[int, ...] = (queue_size,)
        self.bytes_given = 0
        """Random bytes handed to the guest so far."""

    def read_config(self, offset: int, size: int) -> int:
        """No configuration space: all-ones."""
        return (1 << (8 * size)) - 1

    def write_config(self, offset: int, size: int, value: int) -> None:
        """No configuration space: ignored."""

    def process(self, index: int, queue: SplitQueue) -> None:
        """Fill each available chain (up to 64 KiB of it) and return it."""
        for chain in queue:
            written = queue.write(chain, self.source(min(chain.writable_length, _MOST_PER_REQUEST)))
            queue.push(chain, written)
            self.bytes_given += written

    def reset(self) -> None:
        """Nothing to forget."""

    def attach(self, wake: Callable[[int], None]) -> None:
        """Nothing comes unasked: the device only answers the driver's requests."""
