"""Whole workloads: SeaBIOS and a Linux boot on hvcore (sim, kvm) and QEMU (TCG, KVM) (``nox -s bench -- --workloads``).

Two workloads, each to a marker on its console:

- **seabios**: Debian's SeaBIOS (``HVCORE_SEABIOS``, ``~/.cache/hvcore/seabios/bios.bin`` or
  ``/usr/share/seabios/bios.bin``) to "No bootable device" on its debug console (port 0x402);
- **linux**: Debian's kernel and busybox (``HVCORE_LINUX_KERNEL`` / ``HVCORE_BUSYBOX``, or
  ``~/.cache/hvcore/linux/{vmlinuz,busybox}``: ``.ci/run`` fetches them) with the busybox
  initramfs of ``tests.busybox_init`` to its ``/init`` running (:data:`~tests.busybox_init.INIT_MARKER`
  on the serial console).

Four runners: **hvcore-sim** and **hvcore-kvm** (a ``Machine`` with ``add_pc_devices``, 256 MiB,
one vCPU, default settings), and where ``qemu-system-x86_64`` is installed **qemu-tcg** and
**qemu-kvm**: ``-machine pc`` with ``-nodefaults -no-reboot -display none -m 256``, the serial port
on a pipe (stdout) for Linux or discarded for SeaBIOS (whose debug console, ``isa-debugcon`` at
0x402, is the pipe then), and QEMU's default CPU model (hvcore-kvm passes the host's supported
CPUID; ``-cpu host`` trips an MSR assertion in QEMU 7.2 on some nested hosts). QEMU's PC has
PCI, IDE and a PIIX chipset where hvcore's has none: the guest does more probing there, not less.

Each run is its own process, under a timeout (killed past it), and is timed in two parts:

- **start-up**: from spawning the process until the guest is ready to run (hvcore: the child
  says so once the machine is built and the image loaded; QEMU: started with ``-S``, its QMP
  socket answers ``qmp_capabilities``);
- **guest**: from letting it run (``Machine.start()``; QMP ``cont``) until the marker is on the
  console.

A run that fails, times out or ends without its marker prints as failed with the reason, never a
number; a row whose image, QEMU or backend is missing prints the reason it was skipped. The
ratios are guest times: hvcore-sim / qemu-tcg and hvcore-kvm / qemu-kvm. Each hvcore run also
reports ``Machine.statistics()`` (exits by kind). Timings are reported, never asserted; ``--json PATH``
also writes the runs as JSON (``python -m bench.record`` gathers it for the docs' performance page).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Final

import hvcore
from hvcore.vmm.machine import Machine, MachineResult
from hvcore.vmm.pc import add_pc_devices
from hvcore.vmm.run import ConsoleTee
from tests.busybox_init import CMDLINE, INIT_MARKER, initramfs

__all__ = [
    "RUNNERS",
    "WORKLOADS",
    "Images",
    "Outcome",
    "find_images",
    "format_report",
    "main",
    "outcomes_to_json",
    "qemu_command",
    "run_all",
    "run_hvcore",
    "run_qemu",
    "write_initrd",
]

WORKLOADS: Final = ("seabios", "linux")
RUNNERS: Final = ("hvcore-sim", "qemu-tcg", "hvcore-kvm", "qemu-kvm")
RATIOS: Final = (("hvcore-sim", "qemu-tcg"), ("hvcore-kvm", "qemu-kvm"))
"""Guest-time ratios printed per workload: (numerator, denominator)."""
MEMORY_MIB: Final = 256
SEABIOS_MARKER: Final = "No bootable device"
DEFAULT_TIMEOUTS: Final = {"seabios": 60.0, "linux": 180.0}
"""Seconds each run may take, start-up included."""

_CACHE = Path.home() / ".cache" / "hvcore"
_QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class Images:
    """Where each workload's files are, or why a workload cannot run (``missing``)."""

    seabios: Path | None = None
    kernel: Path | None = None
    busybox: Path | None = None
    initrd: Path | None = None
    """The busybox initramfs (``tests.busybox_init``) written to a file: see :func:`write_initrd`."""
    missing: Mapping[str, str] = field(default_factory=dict)


def _first_file(candidates: Sequence[str]) -> Path | None:
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def find_images(environ: Mapping[str, str] | None = None, cache: Path = _CACHE) -> Images:
    """The images the workloads need, found as the tests find them (see the module docstring)."""
    env = os.environ if environ is None else environ
    seabios_places = (env.get("HVCORE_SEABIOS", ""), str(cache / "seabios/bios.bin"), "/usr/share/seabios/bios.bin")
    seabios = _first_file(seabios_places)
    kernel = _first_file((env.get("HVCORE_LINUX_KERNEL", ""), str(cache / "linux/vmlinuz")))
    busybox = _first_file((env.get("HVCORE_BUSYBOX", ""), str(cache / "linux/busybox")))
    missing: dict[str, str] = {}
    if seabios is None:
        missing["seabios"] = f"SeaBIOS not found (HVCORE_SEABIOS, {', '.join(seabios_places[1:])}); `bash .ci/run`"
    if kernel is None or busybox is None:
        missing["linux"] = (
            f"kernel or busybox not found (HVCORE_LINUX_KERNEL / HVCORE_BUSYBOX, {cache / 'linux'}); `bash .ci/run`"
        )
    return Images(seabios, kernel, busybox, missing=missing)


def write_initrd(images: Images, directory: Path) -> Images:
    """``images`` with the busybox initramfs built and written into ``directory`` (unchanged without busybox)."""
    if images.busybox is None:
        return images
    path = directory / "initramfs.cpio"
    path.write_bytes(initramfs(images.busybox.read_bytes()))
    return replace(images, initrd=path)


@dataclass(frozen=True)
class Outcome:
    """One run: its times (seconds), or why it failed or was skipped."""

    workload: str
    runner: str
    startup: float | None = None
    guest: float | None = None
    failed: str | None = None
    """Why the run failed (a timeout, no marker, an error): its times are then not shown."""
    skipped: str | None = None
    """Why the run was not attempted (no image, no QEMU, backend unusable)."""
    exits: Mapping[str, int] = field(default_factory=dict)
    """``Machine.statistics()`` of an hvcore run."""

    @property
    def ok(self) -> bool:
        """Whether the run reached its marker (and so has both times)."""
        return self.failed is None and self.skipped is None and self.guest is not None and self.startup is not None


# -- hvcore: a child process per run ------------------------------------------------------------


def _child(spec: Mapping[str, str | float], out: IO[str]) -> int:
    """In the child: build the machine, say READY, run to the marker, print the result as JSON."""
    workload, backend, timeout = str(spec["workload"]), str(spec["backend"]), float(spec["timeout"])
    marker = SEABIOS_MARKER if workload == "seabios" else INIT_MARKER
    seen: list[float] = []
    with hvcore.open_hypervisor(backend) as hv, Machine(hv, memory=MEMORY_MIB << 20) as machine:

        def matched() -> None:
            seen.append(time.perf_counter())
            machine.stop(MachineResult("until"))

        console = io.StringIO()
        tee = ConsoleTee(console, marker, matched)
        if workload == "seabios":
            add_pc_devices(machine, debugcon=tee)  # type: ignore[arg-type]  # write/flush suffice
            machine.load(Path(str(spec["seabios"])).read_bytes())
        else:
            add_pc_devices(machine, serial=tee)  # type: ignore[arg-type]
            kernel, initrd = Path(str(spec["kernel"])).read_bytes(), Path(str(spec["initrd"])).read_bytes()
            machine.load(kernel, cmdline=CMDLINE, initrd=initrd)
        print("READY", file=out, flush=True)
        start = time.perf_counter()
        result = machine.run(timeout=timeout)
        report: dict[str, object] = {"result": result.reason, "exits": dict(machine.statistics())}
        if result.reason == "until" and seen:
            report["guest"] = seen[0] - start
        elif result.error is not None:
            report["error"] = f"{type(result.error).__name__}: {result.error}"
        else:
            report["error"] = f"console's last line: {_last_line(console.getvalue())!r}"
    print(json.dumps(report), file=out, flush=True)
    return 0


def _backend_unusable(name: str) -> str | None:
    try:
        hvcore.open_hypervisor(name).close()
    except hvcore.BackendUnavailable as exc:
        return exc.message or "unavailable"
    return None


def run_hvcore(workload: str, backend: str, images: Images, timeout: float) -> Outcome:
    """One run of ``workload`` on hvcore's ``backend`` in a child process (see the module docstring)."""
    runner = f"hvcore-{backend}"
    reason = _backend_unusable(backend)
    if reason is not None:
        return Outcome(workload, runner, skipped=f"backend {backend} unusable: {reason}")
    spec = {
        "workload": workload,
        "backend": backend,
        "timeout": timeout,
        "seabios": str(images.seabios),
        "kernel": str(images.kernel),
        "initrd": str(images.initrd),
    }
    command = [sys.executable, "-m", "bench.workloads", "--child", json.dumps(spec)]
    lines: list[tuple[float, str]] = []
    spawned = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        failed = _collect(child, lines, timeout + 10)
        stderr = child.stderr.read() if child.stderr is not None else ""
    ready = next((at for at, line in lines if line == "READY"), None)
    report = next((json.loads(line) for _, line in lines if line.startswith("{")), None)
    if failed is None and (ready is None or report is None):
        failed = f"the child exited ({child.returncode}) without a result: {_last_line(stderr)}"
    if failed is not None:
        return Outcome(workload, runner, failed=failed)
    assert ready is not None and report is not None
    exits = {str(k): int(v) for k, v in report["exits"].items()}
    if "guest" not in report:
        why = "timed out" if report["result"] == "timeout" else f"ended: {report['result']}"
        detail = f" ({report['error']})" if "error" in report else ""
        return Outcome(workload, runner, failed=f"{why} before the marker{detail}", exits=exits)
    return Outcome(workload, runner, startup=ready - spawned, guest=float(report["guest"]), exits=exits)


def _collect(child: subprocess.Popen[str], lines: list[tuple[float, str]], timeout: float) -> str | None:
    """Read the child's stdout lines with their arrival time; kill it after ``timeout``. The failure, if any."""
    assert child.stdout is not None
    stdout = child.stdout

    def read() -> None:
        for line in stdout:
            lines.append((time.perf_counter(), line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        return f"killed after {timeout:g} s"
    reader.join(5)
    return None


def _last_line(text: str) -> str:
    rest = [line for line in text.strip().splitlines() if line.strip()]
    return rest[-1] if rest else "no error output"


# -- QEMU: -S, then QMP cont --------------------------------------------------------------------


def qemu_command(workload: str, accel: str, images: Images, qmp: Path) -> list[str]:
    """The QEMU command line for ``workload`` under ``accel`` (``tcg`` or ``kvm``), paused, QMP on ``qmp``."""
    command = [_QEMU, "-machine", f"pc,accel={accel}", "-nodefaults", "-no-reboot", "-display", "none"]
    command += ["-m", str(MEMORY_MIB), "-S", "-qmp", f"unix:{qmp},server=on,wait=off"]
    if workload == "seabios":
        command += ["-bios", str(images.seabios), "-serial", "null"]
        command += ["-chardev", "stdio,id=out", "-device", "isa-debugcon,iobase=0x402,chardev=out"]
    else:
        command += ["-serial", "stdio", "-kernel", str(images.kernel), "-initrd", str(images.initrd)]
        command += ["-append", CMDLINE]
    return command


def _qmp(path: Path, deadline: float) -> socket.socket:
    """Connect to QEMU's QMP socket and leave command mode on (``qmp_capabilities`` answered)."""
    while True:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(max(0.1, deadline - time.perf_counter()))
            sock.connect(str(path))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.perf_counter() > deadline:
                raise TimeoutError("QMP socket never appeared") from None
            time.sleep(0.002)
    try:
        with sock.makefile("rw", encoding="utf-8") as stream:
            _qmp_line(stream)  # the greeting
            stream.write('{"execute": "qmp_capabilities"}\n')
            stream.flush()
            while '"return"' not in _qmp_line(stream):
                pass
    except BaseException:
        sock.close()
        raise
    return sock


def _qmp_line(stream: IO[str]) -> str:
    line = stream.readline()
    if not line:
        raise ConnectionError("QEMU closed its QMP socket")
    return line


def run_qemu(workload: str, accel: str, images: Images, timeout: float, *, marker: str) -> Outcome:
    """One run of ``workload`` under QEMU with ``accel`` (see the module docstring)."""
    runner = f"qemu-{accel}"
    if shutil.which(_QEMU) is None:
        return Outcome(workload, runner, skipped=f"{_QEMU} not installed")
    if accel == "kvm":
        reason = _backend_unusable("kvm")
        if reason is not None:
            return Outcome(workload, runner, skipped=f"KVM unusable: {reason}")
    with tempfile.TemporaryDirectory(prefix="hvcore-bench-") as tmp:
        qmp = Path(tmp) / "qmp.sock"
        command = qemu_command(workload, accel, images, qmp)
        spawned = time.perf_counter()
        deadline = spawned + timeout
        with subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as child:
            try:
                return _qemu_run(child, workload, runner, qmp, marker, spawned, deadline)
            finally:
                child.kill()
                child.wait()


def _qemu_run(
    child: subprocess.Popen[bytes], workload: str, runner: str, qmp: Path, marker: str, spawned: float, deadline: float
) -> Outcome:
    seen = threading.Event()
    at: list[float] = []
    assert child.stdout is not None
    stdout = child.stdout

    def watch() -> None:
        tail = b""
        needle = marker.encode()
        while chunk := os.read(stdout.fileno(), 65536):
            tail = (tail + chunk)[-(len(needle) + 65536) :]
            if not at and needle in tail:
                at.append(time.perf_counter())
                seen.set()
        seen.set()  # EOF: the process ended

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        sock = _qmp(qmp, deadline)
    except (OSError, TimeoutError) as exc:
        return Outcome(workload, runner, failed=f"QMP: {exc}: {_qemu_error(child)}")
    with sock:
        ready = time.perf_counter()
        sock.sendall(b'{"execute": "cont"}\n')
        start = time.perf_counter()
        seen.wait(max(0.0, deadline - start))
    if at:
        return Outcome(workload, runner, startup=ready - spawned, guest=at[0] - start)
    if child.poll() is not None:
        return Outcome(
            workload, runner, failed=f"QEMU exited ({child.returncode}) before the marker: {_qemu_error(child)}"
        )
    return Outcome(workload, runner, failed=f"timed out after {deadline - spawned:g} s before the marker")


def _qemu_error(child: subprocess.Popen[bytes]) -> str:
    if child.poll() is None:
        child.kill()
        child.wait()
    assert child.stderr is not None
    return _last_line(child.stderr.read().decode(errors="replace"))


# -- the table ------------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def format_report(outcomes: Sequence[Outcome]) -> str:
    """The table of runs, the ratios, and the exit counts of the hvcore runs."""
    lines = [f"{'workload':<9} {'runner':<11} {'start-up':>9} {'guest':>9} {'total':>9}  result", "-" * 64]
    for o in outcomes:
        if o.ok:
            assert o.startup is not None and o.guest is not None
            total = o.startup + o.guest
            lines.append(f"{o.workload:<9} {o.runner:<11} {_seconds(o.startup):>9} {_seconds(o.guest):>9} "
                         f"{_seconds(total):>9}  ok")  # fmt: skip
        else:
            status = f"FAILED: {o.failed}" if o.failed is not None else f"skipped: {o.skipped}"
            lines.append(f"{o.workload:<9} {o.runner:<11} {'-':>9} {'-':>9} {'-':>9}  {status}")
    lines += ["", "guest-time ratios:"]
    for workload in dict.fromkeys(o.workload for o in outcomes):
        for top, bottom in RATIOS:
            a = next((o for o in outcomes if o.workload == workload and o.runner == top), None)
            b = next((o for o in outcomes if o.workload == workload and o.runner == bottom), None)
            if a is None or b is None:
                continue
            if a.ok and b.ok and a.guest is not None and b.guest:
                value = f"{a.guest / b.guest:.2f}x"
            else:
                value = "n/a (" + ", ".join(f"{o.runner} did not finish" for o in (a, b) if not o.ok) + ")"
            lines.append(f"  {workload:<9} {top + ' / ' + bottom:<25} {value}")
    exits = [o for o in outcomes if o.exits]
    if exits:
        lines += ["", "hvcore exits by kind (Machine.statistics(); zero counts left out):"]
        for o in exits:
            counts = ", ".join(f"{k} {v:,}" for k, v in sorted(o.exits.items(), key=lambda kv: -kv[1]) if v)
            lines.append(f"  {o.workload:<9} {o.runner:<11} {counts}")
    return "\n".join(lines)


def outcomes_to_json(outcomes: Sequence[Outcome]) -> list[dict[str, object]]:
    """The runs as plain JSON-able data (``--json``): each :class:`Outcome`'s fields."""
    return [asdict(o) | {"exits": dict(o.exits)} for o in outcomes]


def _median_outcome(runs: Sequence[Outcome]) -> Outcome:
    """The run with the median guest time; the first failure if any run failed."""
    bad = next((o for o in runs if not o.ok), None)
    if bad is not None:
        return bad
    guest = statistics.median_low([o.guest for o in runs if o.guest is not None])
    return next(o for o in runs if o.guest == guest)


def run_all(
    workloads: Sequence[str],
    runners: Sequence[str],
    images: Images,
    timeouts: Mapping[str, float],
    *,
    repeat: int = 1,
    progress: Callable[[str], None] | None = None,
) -> list[Outcome]:
    """Every (workload, runner) pair, ``repeat`` times each (the median guest time is kept)."""
    outcomes: list[Outcome] = []
    for workload in workloads:
        for runner in runners:
            if workload in images.missing:
                outcomes.append(Outcome(workload, runner, skipped=images.missing[workload]))
                continue
            runs: list[Outcome] = []
            for _ in range(repeat):
                if progress is not None:
                    progress(f"{workload} on {runner} ...")
                kind, name = runner.split("-", 1)
                if kind == "hvcore":
                    run = run_hvcore(workload, name, images, timeouts[workload])
                else:
                    marker = SEABIOS_MARKER if workload == "seabios" else INIT_MARKER
                    run = run_qemu(workload, name, images, timeouts[workload], marker=marker)
                runs.append(run)
                if not run.ok:
                    break
            outcomes.append(_median_outcome(runs))
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the workloads, print the table. Exit status 0 unless the arguments were bad."""
    parser = argparse.ArgumentParser(prog="python -m bench.workloads", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workloads", action="store_true", help="accepted for `nox -s bench -- --workloads`")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="workloads to run (%(default)s)")
    parser.add_argument("--runners", default=",".join(RUNNERS), help="runners (%(default)s)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; the median guest time is shown")
    parser.add_argument("--seabios-timeout", type=float, default=DEFAULT_TIMEOUTS["seabios"], help="seconds per run")
    parser.add_argument("--linux-timeout", type=float, default=DEFAULT_TIMEOUTS["linux"], help="seconds per run")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the runs as JSON")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return _child(json.loads(args.child), sys.stdout)
    workloads, runners = args.only.split(","), args.runners.split(",")
    unknown = [w for w in workloads if w not in WORKLOADS] + [r for r in runners if r not in RUNNERS]
    if unknown or args.repeat < 1:
        parser.error(f"unknown workload or runner {unknown}, or --repeat below 1")
    timeouts = {"seabios": args.seabios_timeout, "linux": args.linux_timeout}
    with tempfile.TemporaryDirectory(prefix="hvcore-bench-") as tmp:
        images = write_initrd(find_images(), Path(tmp))
        outcomes = run_all(workloads, runners, images, timeouts, repeat=args.repeat, progress=_progress)
    print(format_report(outcomes))
    if args.json is not None:
        args.json.write_text(json.dumps(outcomes_to_json(outcomes), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _progress(text: str) -> None:
    print(f"bench.workloads: {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
