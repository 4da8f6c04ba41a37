"""Fast runs: Unicorn's own instruction counter, moved from every instruction to every block.

A counted run (``emu_start`` with ``count > 0``) makes Unicorn call its ``hook_count_cb`` before
every instruction, through a ``UC_HOOK_CODE`` hook that also ends each instruction with an
exit-request check and keeps blocks from chaining: about ten times slower than Unicorn's own
speed. Here the same C function is registered a second time, as a ``UC_HOOK_BLOCK`` hook, and the
first registration's range is moved to an address no code has. The budget of a run then counts
blocks, a run still stops only between instructions (a block hook runs before the block's own
exit-request check), and kicks and other vCPUs still stop it by lowering ``emu_count``.

:class:`BlockCounter` switches an engine between the two (``precise``: a count per instruction;
``fast``: a count per block). Translated code carries the hooks it was translated with, so a switch
drops every translation. Nothing here is Unicorn's public API: the ``struct hook`` fields and the
``count_hook`` slot (just before ``emu_counter``, which :mod:`hvcore_sim.layout` calibrates) are
checked before use, and an engine where they do not check out stays precise.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from hvcore_sim.engine import Engine

__all__ = ["BlockCounter"]

# Unicorn 2.1's struct hook: int type, insn, refs, op, op_flags; bool to_delete; u64 begin, end; void *callback
_TYPE, _BEGIN, _END, _CALLBACK = 0, 24, 32, 40
_EVERYWHERE: Final = (1, 0)  # begin > end: every address (HOOK_BOUND_CHECK)
_NOWHERE: Final = (0xFFFF_FFFF_FFFF_F000, 0xFFFF_FFFF_FFFF_F000)  # one address no guest code has
_UC_HOOK_CODE: Final = 4
_SCRATCH_RIP: Final = 0xFFFF_FFFF_FFFF_F000


def _bounds(hook: int, where: tuple[int, int]) -> None:
    ctypes.c_uint64.from_address(hook + _BEGIN).value = where[0]
    ctypes.c_uint64.from_address(hook + _END).value = where[1]


class BlockCounter:
    """The per-instruction and per-block counting hooks of one engine, and which of them counts."""

    def __init__(self, count_hook: int, block_hook: int) -> None:
        self._count_hook = count_hook
        self._block_hook = block_hook
        _bounds(count_hook, _NOWHERE)  # fast from the start: nothing is translated yet
        self.fast = True
        """Whether runs count blocks (else instructions)."""

    @classmethod
    def install(cls, engine: Engine) -> BlockCounter | None:
        """Add the block hook to ``engine`` (fast to begin with); None where Unicorn's layout does not check out."""
        import unicorn
        from unicorn.unicorn_py3.unicorn import uclib

        uc: Any = engine.uc
        slot = ctypes.c_uint64.from_address(engine.handle_address + engine.layout.counter - 8)
        rip = engine.reg(engine.RIP)
        if not slot.value:  # Unicorn adds its count hook at the first counted run: one that fetches nothing
            with contextlib.suppress(unicorn.UcError):
                engine.start(_SCRATCH_RIP, 1)
            engine.set_reg(engine.RIP, rip)
        hook = slot.value
        if not hook or ctypes.c_int.from_address(hook + _TYPE).value != _UC_HOOK_CODE:
            return None
        if (ctypes.c_uint64.from_address(hook + _BEGIN).value, ctypes.c_uint64.from_address(hook + _END).value) != (
            _EVERYWHERE
        ):
            return None
        callback = ctypes.c_uint64.from_address(hook + _CALLBACK).value
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(
            uc._uch,
            ctypes.byref(handle),
            unicorn.UC_HOOK_BLOCK,
            ctypes.c_void_p(callback),
            None,
            ctypes.c_uint64(_EVERYWHERE[0]),
            ctypes.c_uint64(_EVERYWHERE[1]),
        )
        if status or not handle.value:
            return None
        return cls(hook, handle.value)

    def set_fast(self, engine: Engine, fast: bool) -> None:
        """Count blocks (``fast``) or instructions from the next run on; drops translated code if that changes."""
        if fast == self.fast:
            return
        _bounds(self._count_hook, _NOWHERE if fast else _EVERYWHERE)
        _bounds(self._block_hook, _EVERYWHERE if fast else _NOWHERE)
        self.fast = fast
        engine.uc.ctl_flush_tb()
