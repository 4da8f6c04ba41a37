"""The context-manager half of every closeable hvcore object."""

from __future__ import annotations

from types import TracebackType

from typing_extensions import Self

__all__ = ["Closeable"]


class Closeable:
    """Mixin: ``with obj:`` returns ``obj`` and calls its ``close()`` on the way out, whatever happened."""

    __slots__ = ()

    def close(self) -> None:
        """Release what the object holds; idempotent."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
