"""One small interning table: equal immutable values shared by key, with a bound on how many are kept.

Both backends hand out the same exit object for the same hot exit (an OUT of one byte to one port,
an MMIO read of one address) instead of building an equal one each time, as ``HltExit`` is one
value. The keys a guest produces are few in practice but unbounded in principle (an OUT of every
value), so the table starts again empty when it is full: a miss only costs building the value again.

    table: InternTable[tuple[int, int], MmioExit] = InternTable()
    exit_ = table.get(key) or table.put(key, MmioExit(...))

It is a ``dict``, so ``get`` on the hot path is the dict's own.
"""

from __future__ import annotations

from typing import Final, Generic, TypeVar

__all__ = ["DEFAULT_LIMIT", "InternTable"]

K = TypeVar("K")
V = TypeVar("V")

DEFAULT_LIMIT: Final = 1024
"""How many values a table keeps by default: a VMM's hot exits are few."""


class InternTable(dict[K, V], Generic[K, V]):
    """A ``dict`` of shared values that holds at most ``limit`` entries: :meth:`put` empties it when full."""

    __slots__ = ("limit",)

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> V:
        """Keep ``value`` under ``key`` (emptying the table first if it is full) and return it."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
