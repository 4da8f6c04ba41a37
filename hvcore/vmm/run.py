"""``hvcore run IMAGE``: a PC machine around an image, its console on the terminal, a summary at the end.

Exit statuses (:class:`ExitStatus`; ``hvcore run --help`` and the documentation's CLI page (docs/cli.md) list them):

- 0 ``OK``: the guest ended normally: it halted (no irqchip), reset the machine, or printed the ``--until`` text;
- odd: the guest wrote ``v`` to isa-debug-exit (port 0xf4): ``(v << 1) | 1``, as QEMU;
- 2 ``USAGE``: a bad argument (``hvcore run: error: argument ...``);
- 4 ``RUN_FAILED``: the run failed: an unusable backend, a bad image, a device or hypervisor error, a trace
  that could not be written;
- 6 ``GUEST_CRASHED``: the guest crashed: a triple fault (SHUTDOWN), or an instruction the hypervisor could
  not emulate (internal error);
- 124 ``TIMED_OUT``: ``--timeout`` passed first (with ``--until``: before the text came), as timeout(1);
- 130 ``INTERRUPTED``: interrupted (Ctrl-C).

Every status of hvcore's own is even, so none can read as a guest's verdict (1 is kvm-unit-tests' pass).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import errno
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from enum import IntEnum
from pathlib import Path
from typing import IO, Final, TextIO

import hvcore
from hvcore.errors import HvError, InvalidArgument, ResourceExhausted
from hvcore.vmm.loaders.files import read_image_file
from hvcore.vmm.loaders.firmware import MAX_FIRMWARE_SIZE
from hvcore.vmm.machine import Machine, MachineResult, OvercommitWarning, check_vcpu_count
from hvcore.vmm.pc import add_pc_devices
from hvcore.vmm.virtio.block import VirtioBlock
from hvcore.vmm.virtio.device import VirtioDevice
from hvcore.vmm.virtio.net import VirtioNet
from hvcore.vmm.virtio.pci import add_virtio_pci

__all__ = ["RUN_FAILED", "ConsoleTee", "ExitStatus", "LateUsageError", "exit_status_help", "run_image"]


class ExitStatus(IntEnum):
    """``hvcore run``'s own exit statuses (see the module docstring): all even, as a guest's never are."""

    OK = 0
    USAGE = 2
    RUN_FAILED = 4
    GUEST_CRASHED = 6
    TIMED_OUT = 124
    INTERRUPTED = 130


RUN_FAILED: Final = ExitStatus.RUN_FAILED
"""``hvcore run``'s status when the run itself failed (see :class:`ExitStatus`)."""

_MEANINGS: Final = {
    ExitStatus.OK: "the guest ended normally: halted (no irqchip), reset, powered off, or printed the --until text",
    ExitStatus.USAGE: "a bad argument",
    ExitStatus.RUN_FAILED: "the run failed: a bad image, a device or hypervisor error, an unwritable trace",
    ExitStatus.GUEST_CRASHED: "the guest crashed: a triple fault, or an instruction the hypervisor could not emulate",
    ExitStatus.TIMED_OUT: "--timeout passed first (with --until: before the text came), as timeout(1)",
    ExitStatus.INTERRUPTED: "interrupted (Ctrl-C)",
}


def exit_status_help() -> str:
    """The exit statuses as ``hvcore run --help`` lists them."""
    rows = [(str(int(status)), _MEANINGS[status]) for status in ExitStatus]
    rows.insert(1, ("odd", "the guest wrote v to isa-debug-exit (port 0xf4): (v << 1) | 1, as QEMU"))
    return "exit statuses:\n" + "\n".join(f"  {status:<5} {meaning}" for status, meaning in rows)


_WIDTH = 10


class LateUsageError(Exception):
    """A bad argument seen only once the backend is open (more vCPUs than it takes): a usage error all the same."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"argument {argument}: {message}")
        self.argument = argument
        self.message = message


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


def _error_text(error: BaseException | None) -> str:
    if isinstance(error, HvError):
        return error.message or type(error).__name__
    return f"{type(error).__name__}: {error}" if error is not None else "no error given"


def _status(result: MachineResult, args: argparse.Namespace) -> tuple[int, str]:
    """The exit status and the summary line for how the run ended."""
    reason = result.reason
    if reason == "until":
        return ExitStatus.OK, f"the guest printed {args.until!r}"
    if reason == "debug-exit":
        status = (result.status or 0) & 0xFF
        return status, f"the guest wrote to isa-debug-exit: exit status {status}"
    if reason == "timeout":
        if args.until:
            return ExitStatus.TIMED_OUT, f"timed out after {args.timeout:g} s without the guest printing {args.until!r}"
        return ExitStatus.TIMED_OUT, f"stopped after {args.timeout:g} s (--timeout)"
    if reason in ("halted", "reset", "poweroff", "stopped"):
        ended = {
            "halted": "the guest halted",
            "reset": "the guest reset the machine",
            "poweroff": "the guest powered off",
        }
        return ExitStatus.OK, ended.get(reason, reason)
    if reason == "shutdown":
        return ExitStatus.GUEST_CRASHED, "the guest crashed: it triple-faulted (SHUTDOWN)"
    if reason == "internal-error":
        return ExitStatus.GUEST_CRASHED, f"the guest crashed: {_error_text(result.error)}"
    return ExitStatus.RUN_FAILED, f"the run failed: {_error_text(result.error)}"


class _TraceFile:
    """The ``--trace`` file: a failed write raises an hvcore error naming the file (it ends the run)."""

    def __init__(self, path: str) -> None:
        self._path = path
        try:
            self._file: IO[str] | None = open(path, "w", encoding="utf-8")  # noqa: SIM115 -- closed by close()
        except OSError as exc:
            raise self._error(exc) from None

    def _error(self, exc: OSError) -> HvError:
        cls = ResourceExhausted if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else InvalidArgument
        return cls(f"cannot write the trace to {self._path}: {exc.strerror}", errno=exc.errno, operation="trace")

    def write(self, text: str) -> int:
        """Write ``text``."""
        assert self._file is not None
        try:
            return self._file.write(text)
        except OSError as exc:
            raise self._error(exc) from None

    def flush(self) -> None:
        """Flush to the file."""
        assert self._file is not None
        try:
            self._file.flush()
        except OSError as exc:
            raise self._error(exc) from None

    def close(self) -> None:
        """Close the file (once); an error writing what was left is raised."""
        file, self._file = self._file, None
        if file is None:
            return
        try:
            file.close()
        except OSError as exc:
            raise self._error(exc) from None


def image_limit(memory: int) -> int:
    """The largest image ``hvcore run`` reads for a machine with ``memory`` bytes: the memory, or a firmware ROM."""
    return max(memory, MAX_FIRMWARE_SIZE)


def run_image(args: argparse.Namespace, out: TextIO) -> int:
    """Boot ``args.image`` as the ``run`` command's options say; the process exit status (:class:`ExitStatus`)."""
    image = read_image_file(args.image, image_limit(args.memory))
    initrd = read_image_file(args.initrd, args.memory, "initrd") if args.initrd else None
    trace_file = _TraceFile(args.trace) if args.trace else None
    try:
        result, elapsed, stats = _run(args, image, initrd, trace_file, out)
    except BaseException:
        if trace_file is not None:
            with contextlib.suppress(HvError):  # the error on its way out says more
                trace_file.close()
        raise
    status, summary = _status(result, args)
    if trace_file is not None:
        try:
            trace_file.close()
        except HvError as exc:
            if status != ExitStatus.RUN_FAILED:  # else the run failed writing it already
                status, summary = ExitStatus.RUN_FAILED, f"the run failed: {exc.message}"
    if not args.quiet:
        print(file=out)
        _row(out, "result", summary)
        _row(out, "time", f"{elapsed:.2f} s")
    if args.stats:
        _row(out, "exits", ", ".join(f"{k} {v}" for k, v in sorted(stats.items()) if v))
    if status in (ExitStatus.RUN_FAILED, ExitStatus.GUEST_CRASHED) or (status == ExitStatus.TIMED_OUT and args.until):
        print(f"hvcore: error: {summary}", file=sys.stderr)
    return status


def _run(
    args: argparse.Namespace, image: bytes, initrd: bytes | None, trace_file: _TraceFile | None, out: TextIO
) -> tuple[MachineResult, float, Mapping[str, int]]:
    """Build the machine, load the image, run it: how it ended, in how many seconds, and the exit counts."""
    with hvcore.open_hypervisor(args.backend) as hv:
        try:
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always", OvercommitWarning)
                check_vcpu_count(hv, args.cpus, "--cpus")
        except InvalidArgument as exc:
            raise LateUsageError("--cpus", exc.message) from None
        for warning in warned:
            print(f"hvcore: warning: {warning.message}", file=sys.stderr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OvercommitWarning)  # said above, in one line
            machine = Machine(hv, memory=args.memory, cpus=args.cpus, trace=trace_file)  # type: ignore[arg-type]
        with machine:
            return _run_machine(args, hv.name, machine, image, initrd, out)


def _plug(machine: Machine, device: VirtioDevice) -> None:
    """Put ``device`` on the machine's PCI bus, which closes it from then on; closed here if that fails."""
    try:
        add_virtio_pci(machine, device)
    except BaseException:
        close = getattr(device, "close", None)
        if callable(close):
            close()
        raise


def _run_machine(
    args: argparse.Namespace, backend: str, machine: Machine, image: bytes, initrd: bytes | None, out: TextIO
) -> tuple[MachineResult, float, Mapping[str, int]]:
    tee = ConsoleTee(out, args.until, lambda: machine.stop(MachineResult("until")))
    add_pc_devices(machine, serial=tee, debugcon=tee)  # type: ignore[arg-type]  # write/flush suffice
    for path, read_only in args.disk:
        _plug(machine, VirtioBlock(path, read_only=read_only))
    for spec in args.net:
        link = spec.open()
        try:
            nic = VirtioNet(link, mac=spec.mac)
        except BaseException:
            link.close()
            raise
        _plug(machine, nic)
    plan = machine.load(image, format=args.format, cmdline=args.cmdline, initrd=initrd, name=args.image)
    if not args.quiet:
        _row(out, "backend", backend)
        _row(out, "image", f"{Path(args.image).name}: {plan.description}")
        _row(out, "machine", f"{args.memory >> 20} MiB, {args.cpus} vCPU{'s' if args.cpus > 1 else ''}")
        for path, read_only in args.disk:
            _row(out, "disk", f"{path} (virtio-blk{', read-only' if read_only else ''})")
        for spec in args.net:
            _row(out, "net", f"virtio-net on {spec.describe()}")
        print(file=out, flush=True)
    started = time.monotonic()
    result = machine.run(args.timeout)
    return result, time.monotonic() - started, machine.statistics()
