"""``hvcore run IMAGE``: a PC machine around an image, its console on the terminal, a summary at the end."""

from __future__ import annotations

import argparse
import codecs
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import hvcore
from hvcore.errors import InvalidArgument
from hvcore.vmm.machine import Machine, MachineResult
from hvcore.vmm.pc import add_pc_devices

__all__ = ["ConsoleTee", "run_image"]

EXIT_OK, EXIT_FAILURE = 0, 1
_WIDTH = 10


class ConsoleTee:
    """A binary stream the guest's consoles write to: decoded onto the text stream ``target``, watched for ``until``."""

    def __init__(self, target: TextIO, until: str | None, on_match: Callable[[], None]) -> None:
        self._target = target
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._until = until
        self._tail = ""
        self._on_match = on_match
        self._lock = threading.Lock()
        self.matched = False

    def write(self, data: bytes) -> int:
        """Pass ``data`` on; stop the machine once the watched text has appeared."""
        with self._lock:
            text = self._decoder.decode(bytes(data))
            self._target.write(text)
            self._target.flush()
            if self._until is not None and not self.matched:
                self._tail = (self._tail + text)[-(len(self._until) + 64) :]
                if self._until in self._tail:
                    self.matched = True
                    self._on_match()
        return len(data)

    def flush(self) -> None:
        """Flush the target."""
        self._target.flush()


def _row(out: TextIO, label: str, value: str) -> None:
    print(f"{label:<{_WIDTH}}{value}", file=out, flush=True)


def _status(result: MachineResult, args: argparse.Namespace) -> tuple[int, str]:
    reason = result.reason
    if reason == "until":
        return EXIT_OK, f"the guest printed {args.until!r}"
    if reason == "debug-exit":
        status = (result.status or 0) & 0xFF
        return status, f"the guest wrote to isa-debug-exit: exit status {status}"
    if reason == "timeout":
        if args.until:
            return EXIT_FAILURE, f"timed out after {args.timeout:g} s without the guest printing {args.until!r}"
        return EXIT_OK, f"stopped after {args.timeout:g} s (--timeout)"
    if reason in ("halted", "reset", "stopped"):
        return EXIT_OK, {"halted": "the guest halted", "reset": "the guest reset the machine"}.get(reason, reason)
    if reason == "shutdown":
        return EXIT_FAILURE, "the guest triple-faulted (SHUTDOWN)"
    return EXIT_FAILURE, f"{reason}: {result.error}"


def run_image(args: argparse.Namespace, out: TextIO) -> int:
    """Boot ``args.image`` as the ``run`` command's options say; the process exit status."""
    path = Path(args.image)
    try:
        image = path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}", operation="run") from None
    initrd = Path(args.initrd).read_bytes() if args.initrd else None
    quiet = args.quiet
    trace_file = open(args.trace, "w") if args.trace else None  # noqa: SIM115 -- closed below
    try:
        with (
            hvcore.open_hypervisor(args.backend) as hv,
            Machine(hv, memory=args.memory, cpus=args.cpus, trace=trace_file) as machine,
        ):
            tee = ConsoleTee(out, args.until, lambda: machine.stop(MachineResult("until")))
            add_pc_devices(machine, serial=tee, debugcon=tee)  # type: ignore[arg-type]  # write/flush suffice
            plan = machine.load(image, format=args.format, cmdline=args.cmdline, initrd=initrd, name=args.image)
            if not quiet:
                _row(out, "backend", hv.name)
                _row(out, "image", f"{path.name}: {plan.description}")
                _row(out, "machine", f"{args.memory >> 20} MiB, {args.cpus} vCPU{'s' if args.cpus > 1 else ''}")
                print(file=out, flush=True)
            started = time.monotonic()
            result = machine.run(args.timeout)
            elapsed = time.monotonic() - started
            stats = machine.statistics()
        status, summary = _status(result, args)
        if not quiet:
            print(file=out)
            _row(out, "result", summary)
            _row(out, "time", f"{elapsed:.2f} s")
        if args.stats:
            _row(out, "exits", ", ".join(f"{k} {v}" for k, v in sorted(stats.items()) if v))
        if status and result.reason in ("shutdown", "error", "timeout"):
            print(f"hvcore: error: {summary}", file=sys.stderr)
        return status
    finally:
        if trace_file is not None:
            trace_file.close()
