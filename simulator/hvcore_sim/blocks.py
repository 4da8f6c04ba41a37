"""Fast runs: Unicorn's own instruction counter, moved from every instruction to every block.

A counted run (``emu_start`` with ``count > 0``) makes Unicorn call its ``hook_count_cb`` before
every instruction, through a ``UC_HOOK_CODE`` hook that also ends each instruction with an
exit-request check and keeps blocks from chaining: about ten times slower than Unicorn's own
speed. Here the same C function is registered a second time, as a ``UC_HOOK_BLOCK`` hook, and the
first registration's range is moved to an address no code has. The budget of a run then counts
blocks, a run still stops only between instructions (a block hook runs before the block's own
exit-request check), and kicks and other vCPUs still stop it by lowering ``emu_count``.

:class:`BlockCounter` switches an engine between the two (``precise``: a count per instruction;
``fast``: a count per block). Translated code carries the hooks it was translated with, so the two
modes keep apart translations: QEMU looks a block up by its CPU's cluster index too (a TCG cflags
field Unicorn leaves unused), and each mode has a cluster of its own. A switch then costs two hook
ranges and one integer, and each mode finds its own blocks again. Where the cluster index is not
found, a switch drops every translation instead. :class:`ExitDensity` picks the cheaper mode for
what the guest does now: counted runs for code that exits every few instructions.

Nothing here is Unicorn's public API: the ``struct hook`` fields, the ``count_hook`` slot and
``CPUState.cluster_index`` (:mod:`hvcore_sim.unicorn_internals` reaches and checks them) are
checked before use, and an engine where the hooks do not check out stays precise.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final

from hvcore_sim import unicorn_internals
from hvcore_sim.unicorn_internals import Hook, I32Cell

if TYPE_CHECKING:
    from hvcore_sim.engine import Engine

__all__ = ["DENSE_BLOCKS", "DENSE_INSTRUCTIONS", "BlockCounter", "ExitDensity"]

_EVERYWHERE: Final = (1, 0)  # begin > end: every address (HOOK_BOUND_CHECK)
_NOWHERE: Final = (0xFFFF_FFFF_FFFF_F000, 0xFFFF_FFFF_FFFF_F000)  # one address no guest code has
_UC_HOOK_CODE: Final = 4
_SCRATCH_RIP: Final = 0xFFFF_FFFF_FFFF_F000


class BlockCounter:
    """The per-instruction and per-block counting hooks of one engine, and which of them counts."""

    def __init__(self, count_hook: Hook, block_hook: Hook, cluster: I32Cell | None) -> None:
        self._count_hook = count_hook
        self._block_hook = block_hook
        self._cluster = cluster
        self._fast_cluster = cluster.value if cluster is not None else 0
        count_hook.bounds = _NOWHERE  # fast from the start: nothing is translated yet
        self.fast = True
        """Whether runs count blocks (else instructions)."""

    @classmethod
    def install(cls, engine: Engine) -> BlockCounter | None:
        """Add the block hook to ``engine`` (fast to begin with); None where Unicorn's layout does not check out."""
        import unicorn

        uc, counter = engine.uc, engine.layout.counter
        rip = engine.reg(engine.RIP)
        if not unicorn_internals.count_hook(
            uc, counter
        ):  # Unicorn adds it at the first counted run: one that fetches nothing
            with contextlib.suppress(unicorn.UcError):
                engine.start(_SCRATCH_RIP, 1)
            engine.set_reg(engine.RIP, rip)
        address = unicorn_internals.count_hook(uc, counter)
        if not address:
            return None
        hook = Hook(address)
        if hook.type != _UC_HOOK_CODE or hook.bounds != _EVERYWHERE:
            return None
        block = unicorn_internals.add_block_hook(uc, hook.callback, *_EVERYWHERE)
        if block is None:
            return None
        return cls(hook, block, unicorn_internals.cluster_index_cell(uc))

    def set_fast(self, engine: Engine, fast: bool) -> None:
        """Count blocks (``fast``) or instructions from the next run on (in the mode's own translations)."""
        if fast == self.fast:
            return
        self._count_hook.bounds = _NOWHERE if fast else _EVERYWHERE
        self._block_hook.bounds = _EVERYWHERE if fast else _NOWHERE
        self.fast = fast
        cluster = self._cluster
        if cluster is None:
            engine.uc.ctl_flush_tb()
        else:
            cluster.value = self._fast_cluster if fast else self._fast_cluster ^ 1

    @property
    def keeps_both(self) -> bool:
        """Whether each mode keeps its own translations (a switch drops none)."""
        return self._cluster is not None


DENSE_BLOCKS = 32
"""A fast run that stops within this many blocks is short (see :class:`ExitDensity`)."""
DENSE_INSTRUCTIONS = 256
"""A counted run that stops within this many instructions is short (see :class:`ExitDensity`)."""


class ExitDensity:
    """Whether a vCPU's code stops so often that counting every instruction is the cheaper way to run it.

    A fast run pays at each exit for being exact without a count: an I/O instruction ends its run
    through a debug trap, an MMIO store runs again as a block of its own. A counted run stops
    exactly for free but pays for the count at every instruction. Code that exits every few
    instructions (a status poll, a burst of port writes) runs faster counted; code that runs long
    between exits runs faster fast. Two short fast runs in a row switch a vCPU to counted runs; one
    counted run that is not short switches it back. The switch is only made where both modes keep
    their own translations (:attr:`BlockCounter.keeps_both`), so it costs nothing; and both modes
    stop on the same instructions, so the choice is only ever about speed.
    """

    __slots__ = ("short_runs",)

    def __init__(self) -> None:
        self.short_runs = 0
        """Consecutive runs that stopped short of their budget, each soon after it started."""

    @property
    def dense(self) -> bool:
        """Whether the next run should count instructions."""
        return self.short_runs >= 2

    def ran(self, executed: int, fast: bool, stopped: bool) -> None:
        """Account one run: ``executed`` blocks (``fast``) or instructions, ``stopped`` before its budget ran out."""
        short = stopped and executed <= (DENSE_BLOCKS if fast else DENSE_INSTRUCTIONS)
        self.short_runs = min(self.short_runs + 1, 2) if short else 0
