"""The ``hvcore`` command: run an image, run the demo guest, list the backends.

::

    hvcore run IMAGE [options]             boot firmware, a kernel or a flat binary on a PC machine
    hvcore demo [--backend kvm|sim|auto]   run the bundled guest and report what happened
    hvcore info                            every backend: usable or why not, and what it offers
    hvcore info --host                     also probe each backend: where this host's KVM differs from upstream
    hvcore --version

Errors are one line on stderr: a bad argument as argparse says it (``hvcore run: error: argument
--timeout: ...``), anything else ``hvcore: error: ...``. The exit status is 0 on success, 1 when the
hypervisor fails and 2 for a usage error. ``hvcore run`` has its own statuses
(:class:`hvcore.vmm.run.ExitStatus`, listed by ``hvcore run --help``): the guest's isa-debug-exit
status where it wrote one (always odd), 0 for a normal end, and even ones of its own (4 the run
failed, 6 the guest crashed, 124 timed out): never a status a guest's verdict could have.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

import hvcore
from hvcore import host, log, registry
from hvcore.demo import RESULT_PORT, DemoResult, run_demo
from hvcore.errors import HvError
from hvcore.memory import MAX_GUEST_MEMORY, PAGE_SIZE
from hvcore.vmm.loaders.files import check_image_file
from hvcore.vmm.netspec import NetSpec, parse_net
from hvcore.vmm.run import ExitStatus, LateUsageError, exit_status_help, run_image

__all__ = ["main"]

PROG = "hvcore"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, ExitStatus.USAGE, ExitStatus.INTERRUPTED
_LABEL_WIDTH = 10
_USABLE_BECAUSE = {"kvm": "/dev/kvm usable", "sim": "simulator usable"}
"""How ``hvcore demo`` says why auto chose a built-in backend."""


class _UsageError(Exception):
    """A command-line mistake; reported as one line with exit status 2, after the (sub)command's name."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog
        self.message = message


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises on usage errors instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self.prog, message)


def _one_line(text: str) -> str:
    """Fold a multi-line message (``"head:\\n  a\\n  b"``) into ``"head: a; b"``."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    head, rest = lines[0], lines[1:]
    if not rest:
        return head
    return f"{head} {'; '.join(rest)}" if head.endswith(":") else "; ".join(lines)


def _row(label: str, value: str) -> str:
    return f"{label:<{_LABEL_WIDTH}}{value}"


class _LabelledConsole(io.StringIO):
    """Passes guest console text on to ``target``, the first line after a label and the rest indented under it."""

    def __init__(self, target: TextIO, label: str) -> None:
        super().__init__()
        self._target = target
        self._prefix = f"{label:<{_LABEL_WIDTH}}"
        self._at_line_start = True
        self.wrote = False

    def write(self, text: str) -> int:
        for line in text.splitlines(keepends=True):
            if self._at_line_start:
                self._target.write(self._prefix)
                self._prefix = " " * _LABEL_WIDTH
            self._target.write(line)
            self._at_line_start = line.endswith(("\n", "\r"))
            self.wrote = True
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def end(self) -> None:
        """Finish the console block: end a partial last line, or say there was no output."""
        if not self.wrote:
            self._target.write(self._prefix + "(no output)\n")
        elif not self._at_line_start:
            self._target.write("\n")


def _why(requested: str, chosen: str) -> str:
    """Why ``chosen`` was picked for ``--backend requested``."""
    if requested != "auto":
        return "requested with --backend"
    reasons = hvcore.available_backends()
    skipped = []
    for name in registry.AUTO_ORDER:
        if name == chosen:
            break
        reason = reasons.get(name)
        if reason is not None:
            skipped.append(f"{name} unusable: {_one_line(reason)}")
    return "; ".join(skipped) or _USABLE_BECAUSE.get(chosen, f"{chosen} usable")


def _format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} us"


def _print_result(result: DemoResult, out: TextIO) -> None:
    counts = ", ".join(f"{kind} {n}" for kind, n in result.exits.items())
    per_exit = f" ({_format_seconds(result.elapsed / result.total_exits)} per exit)" if result.total_exits else ""
    print(_row("computed", f"{result.value} (sent to port {RESULT_PORT:#x})"), file=out)
    print(_row("exits", f"{result.total_exits} ({counts})"), file=out)
    print(_row("time", f"{_format_seconds(result.elapsed)}{per_exit}"), file=out)


def _cmd_demo(args: argparse.Namespace) -> int:
    out = sys.stdout
    with hvcore.open_hypervisor(args.backend) as hv:
        print(_row("backend", f"{hv.name} ({_why(args.backend, hv.name)})"), file=out, flush=True)
        console = _LabelledConsole(out, "console")
        try:
            result = run_demo(hv, console)
        finally:
            console.end()
            out.flush()
    _print_result(result, out)
    return EXIT_OK


def _describe_usable(hv: hvcore.Hypervisor, indent: str) -> list[str]:
    rows = [
        ("API version", str(hv.api_version())),
        ("capabilities", str(len(hv.capabilities()))),
        ("vCPUs", f"{hv.recommended_vcpus()} recommended, {hv.max_vcpus()} max"),
        ("MSRs", f"{len(hv.msr_index_list())} saved and restored"),
        ("CPUID", f"{len(hv.supported_cpuid())} leaves supported"),
    ]
    width = max(len(label) for label, _ in rows) + 2
    return [f"{indent}{label:<{width}}{value}" for label, value in rows]


def _cmd_info(args: argparse.Namespace) -> int:
    out = sys.stdout
    status = EXIT_OK
    reasons = hvcore.available_backends()
    width = max(len(name) for name in [*reasons, "auto"]) + 2
    indent = " " * (width + 2)
    print(f"{PROG} {hvcore.__version__}", file=out)
    for name, reason in reasons.items():
        if reason is not None:
            print(f"{name:<{width}}unusable: {_one_line(reason)}", file=out)
            continue
        try:
            with hvcore.open_hypervisor(name) as hv:
                details = _describe_usable(hv, indent)
        except HvError as exc:
            print(f"{name:<{width}}usable, but failed: {_one_line(exc.message)}", file=out)
            status = EXIT_FAILURE
            continue
        print(f"{name:<{width}}usable", file=out)
        print("\n".join(details), file=out)
        if args.host:
            status = max(status, _print_host_profile(name, indent, out))
    auto = next((n for n in registry.AUTO_ORDER if reasons.get(n, "not registered") is None), None)
    order = ", ".join(registry.AUTO_ORDER)
    choice = f"{auto} (first usable of {order})" if auto else f"none usable (tries {order})"
    print(f"{'auto':<{width}}{choice}", file=out)
    return status


def _print_host_profile(name: str, indent: str, out: TextIO) -> int:
    with hvcore.open_hypervisor(name) as hv:
        profile = host.host_profile(hv)
    for line in profile.describe()[1:]:  # the backend is named already
        print(f"{indent}{line}", file=out)
    if any(seen.variant == host.UNRECOGNISED for seen in profile.observations.values()):
        print(f"{indent}UNRECOGNISED behaviour: hvcore does not know this host yet; please report this", file=out)
        return EXIT_FAILURE
    return EXIT_OK


def _size(text: str) -> int:
    """``"256M"``, ``"1G"``, ``"65536"`` -> bytes (positive)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    clean = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if clean and clean[-1] in units:
            number = float(clean[:-1])
            if not math.isfinite(number):
                raise ValueError(text)
            size = int(number * units[clean[-1]])
        else:
            size = int(clean, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 256M, 1G)") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size above 0 (e.g. 256M, 1G)")
    return size


def _memory(text: str) -> int:
    """``--memory``: a size of whole pages, from 1 MiB to what hvcore reserves at most."""
    size = _size(text)
    if size < (1 << 20) or size % PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r}: the machine's memory is whole 4 KiB pages and at least 1M")
    if size > MAX_GUEST_MEMORY:
        raise argparse.ArgumentTypeError(f"{text!r} is more than the {MAX_GUEST_MEMORY >> 40}T hvcore allows")
    return size


def _cpus(text: str) -> int:
    """``--cpus``: at least one (the backend's own maximum is checked once it is open: ``LateUsageError``)."""
    try:
        cpus = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of vCPUs") from None
    if cpus < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a machine has at least 1 vCPU")
    return cpus


MAX_TIMEOUT = min(1e9, threading.TIMEOUT_MAX)
"""The longest ``--timeout`` (seconds; about 31 years): what the host's waits can take."""


def _seconds(text: str) -> float:
    """``--timeout``: a finite number of seconds above 0."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < seconds <= MAX_TIMEOUT:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0 and at most {MAX_TIMEOUT:.0f}")
    return seconds


def _utf8(text: str) -> str:
    """``text`` as given, if it was valid UTF-8 (Python keeps other bytes of argv as lone surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        byte = (
            f"byte {ord(text[exc.start]) - 0xDC00:#04x}" if "\udc80" <= text[exc.start] <= "\udcff" else "a surrogate"
        )
        raise argparse.ArgumentTypeError(f"not valid UTF-8 ({byte} at offset {exc.start})") from None
    return text


def _cmdline(text: str) -> str:
    """``--cmdline``: UTF-8 without NUL (the kernel's string ends at the first)."""
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} holds a NUL character, which would end the command line there")
    return _utf8(text)


def _until(text: str) -> str:
    """``--until``: UTF-8, not empty."""
    if not text:
        raise argparse.ArgumentTypeError("the text to wait for is empty (it would match at once)")
    return _utf8(text)


def _readable_file(what: str) -> Callable[[str], str]:
    """The type of an argument naming a regular file to read (an image, an initrd)."""

    def readable(text: str) -> str:
        try:
            check_image_file(text, what)
        except HvError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None
        return text

    return readable


def _disk(text: str) -> tuple[str, bool]:
    """``--disk FILE[,ro]``: a disk image to put behind virtio-blk, read-only with ``,ro``."""
    path, _, option = text.rpartition(",") if text.endswith((",ro", ",rw")) else (text, "", "")
    try:
        check_image_file(path, "disk")
    except HvError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    if not os.access(path, os.R_OK if option == "ro" else os.R_OK | os.W_OK):
        raise argparse.ArgumentTypeError(
            f"cannot {'read' if option == 'ro' else 'read and write'} {path}: permission denied"
            + ("" if option == "ro" else "; add ,ro for a read-only disk")
        )
    return path, option == "ro"


def _net(text: str) -> NetSpec:
    """``--net tap[=IFNAME][,mac=MAC]`` or ``--net udp=LOCALPORT:HOST:PORT[,mac=MAC]``."""
    try:
        return parse_net(text)
    except HvError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _writable_file(text: str) -> str:
    """``--trace``: a file that can be created or overwritten (its directory exists)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file to write the trace to")
    folder = path.parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: no directory {folder}; create it first")
    if not os.access(path if path.exists() else folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: permission denied")
    return text


def _cmd_run(args: argparse.Namespace) -> int:
    if not args.verbose:
        return run_image(args, sys.stdout)
    root = logging.getLogger(log.ROOT)
    level = root.level
    handler = log.enable(logging.INFO if args.verbose == 1 else logging.DEBUG)
    try:
        return run_image(args, sys.stdout)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Portable virtual machine monitors in Python, over Linux KVM or a simulator.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {hvcore.__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run the bundled real-mode guest and show what it did")
    demo.add_argument(
        "--backend",
        choices=[*hvcore.backend_names(), "auto"],
        default="auto",
        help="backend to run on (default: auto, which prefers kvm and falls back to sim)",
    )
    demo.set_defaults(handler=_cmd_demo)

    run = commands.add_parser(
        "run",
        help="boot an image (firmware, bzImage, multiboot, ELF, raw) on a PC machine",
        epilog=exit_status_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("image", type=_readable_file("image"), help="the image file")
    run.add_argument("--backend", choices=[*hvcore.backend_names(), "auto"], default="auto", help="default: auto")
    run.add_argument("--memory", "-m", type=_memory, default=256 << 20, help="RAM, e.g. 256M or 1G (default 256M)")
    run.add_argument("--cpus", type=_cpus, default=1, help="vCPUs (default 1)")
    run.add_argument(
        "--format", choices=["auto", "firmware", "bzimage", "multiboot", "elf", "raw"], default="auto",
        help="image format (default: detected)",
    )  # fmt: skip
    run.add_argument("--cmdline", type=_cmdline, default="", help="kernel command line (bzImage, multiboot)")
    run.add_argument("--initrd", type=_readable_file("initrd"), help="initrd file (bzImage) or module (multiboot)")
    run.add_argument(
        "--disk", type=_disk, action="append", default=[], metavar="FILE[,ro]",
        help="a disk image on virtio-blk (PCI); repeat for more; ,ro makes it read-only",
    )  # fmt: skip
    run.add_argument(
        "--net", type=_net, action="append", default=[], metavar="tap[=IF]|udp=LPORT:HOST:PORT[,mac=MAC]",
        help="a virtio-net NIC (PCI) on a TAP interface (needs CAP_NET_ADMIN) or exchanging frames as UDP "
        "datagrams with HOST:PORT (another hvcore run, unprivileged); repeat for more",
    )  # fmt: skip
    run.add_argument("--timeout", type=_seconds, help="stop after this many seconds (exit status 124)")
    run.add_argument("--until", type=_until, help="stop once the guest's console output contains this text")
    run.add_argument(
        "--trace", type=_writable_file, help="write vCPU 0's exits to this file (JSON lines, see hvcore.trace)"
    )
    run.add_argument("--stats", action="store_true", help="print exit statistics at the end")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress lines, only the guest's output")
    run.add_argument(
        "--verbose", "-v", action="count", default=0,
        help="log what the machine does to stderr: -v devices, BARs, the run's exits and device accesses; "
        "-vv every exit, device access and KVM ioctl (HVCORE_LOG=debug does it for any program)",
    )  # fmt: skip
    run.set_defaults(handler=_cmd_run)

    info = commands.add_parser("info", help="list the backends: usable or why not, and what each supports")
    info.add_argument(
        "--host", action="store_true",
        help="run the host probes: kernel, CPU, KVM module and every deviation from upstream KVM found",
    )  # fmt: skip
    info.set_defaults(handler=_cmd_info)
    return parser


def _fail(message: str, prog: str = PROG) -> None:
    print(f"{prog}: error: {_one_line(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hvcore`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        _fail(f"{exc.message} (see '{exc.prog} --help')", exc.prog)
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version print and exit
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    failed = ExitStatus.RUN_FAILED if args.handler is _cmd_run else EXIT_FAILURE  # `run`: never a guest's status
    try:
        status: int = args.handler(args)
        sys.stdout.flush()  # here, so a closed pipe is caught below rather than at interpreter exit
    except LateUsageError as exc:
        _fail(f"{exc} (see '{PROG} {args.command} --help')", f"{PROG} {args.command}")
        return EXIT_USAGE
    except HvError as exc:
        _fail(exc.message or type(exc).__name__)
        return failed
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``hvcore info | head -1``): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return failed
    return status


if __name__ == "__main__":
    sys.exit(main())
