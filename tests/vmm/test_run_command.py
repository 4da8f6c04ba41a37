"""``hvcore run`` end to end: console, exit status, trace file, statistics and one-line errors."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

import hvcore
from hvcore import Hypervisor, IoDirection, IoExit, trace
from hvcore.cli import main
from hvcore.vmm.loaders.files import read_image_file
from hvcore.vmm.run import ExitStatus, exit_status_help
from tests.vmm.test_boot_images import multiboot_image
from tests.vmm.test_machine import HELLO_EXIT

MULTIBOOT_INFO_FLAGS = 0x4D
"""The low byte of the info block's flags: memory, command line, modules, memory map."""


def test_run_a_raw_image_with_a_trace(hv: Hypervisor, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, recorded = tmp_path / "hello.bin", tmp_path / "hello.trace"
    image.write_bytes(HELLO_EXIT)
    argv = ["run", str(image), "--backend", hv.name, "--format", "raw", "--memory", "16M", "--trace", str(recorded)]
    status = main([*argv, "--stats"])
    out = capsys.readouterr().out
    assert status == 0x43  # the guest's isa-debug-exit status: (0x21 << 1) | 1
    assert "hello, machine" in out
    assert "exit status 67" in out and "IoExit 19" in out
    with recorded.open() as source:
        entries = trace.read_trace(source).entries
    outs = [e.exit for e in entries if isinstance(e.exit, IoExit) and e.exit.port == 0x3F8]
    assert b"".join(e.data for e in outs) == b"hello, machine\n"
    assert len(entries) == 19  # every exit, the last too: the guest's write to isa-debug-exit
    assert entries[-1].exit == IoExit(0xF4, 1, 1, IoDirection.OUT, b"\x21")


def test_run_passes_a_multiboot_kernel_its_file_name_first(
    hv: Hypervisor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "kernel.flat"
    image.write_bytes(multiboot_image())  # prints its command line on the debug console
    status = main(["run", str(image), "--backend", hv.name, "-q", "--cmdline", "cpuid"])
    assert capsys.readouterr().out == f"{image} cpuid"  # as QEMU's -kernel and GRUB pass it: argv[0] first
    assert status == (MULTIBOOT_INFO_FLAGS << 1 | 1) & 0xFF  # the guest exits with the info flags' low byte


def test_run_until_text_and_quiet(hv: Hypervisor, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "hello.bin"
    image.write_bytes(HELLO_EXIT)
    status = main(["run", str(image), "--backend", hv.name, "--format", "raw", "-q", "--until", "machine"])
    assert status == 0
    assert capsys.readouterr().out.startswith("hello, machine")  # -q: the guest's output only


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "elf"], "ELF: bad magic"),
        (["--format", "bzimage"], "HdrS"),
        (["--cmdline", "x", "--format", "raw"], "command line"),
    ],
)
def test_run_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    image = tmp_path / "junk.bin"
    image.write_bytes(bytes(range(256)) * 8)
    status = main(["run", str(image), "--backend", "sim", *argv])
    err = capsys.readouterr().err
    assert status == ExitStatus.RUN_FAILED  # 4: even: never a guest's isa-debug-exit verdict
    assert err.startswith("hvcore: error: ") and message in err and err.count("\n") == 1


# -- every bad argument: one argparse-style line, status 2, no traceback --------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--initrd", "/nonexistent/initrd"],
            "argument --initrd: cannot read initrd /nonexistent/initrd: No such file",
        ),
        (["--initrd", "{tmp}"], "argument --initrd: initrd {tmp} is a directory, not a regular file"),
        (
            ["--trace", "/nonexistent/dir/x.trace"],
            "argument --trace: cannot write /nonexistent/dir/x.trace: no directory",
        ),
        (["--trace", "{tmp}"], "argument --trace: {tmp} is a directory"),
        (["--timeout", "inf"], "argument --timeout: 'inf': give a number of seconds above 0 and at most 1000000000"),
        (["--timeout", "1e300"], "argument --timeout: '1e300': give a number of seconds above 0"),
        (["--timeout", "-1"], "argument --timeout: '-1': give a number of seconds above 0"),
        (["--timeout", "nan"], "argument --timeout: 'nan': give a number of seconds above 0"),
        (["--timeout", "0"], "argument --timeout: '0': give a number of seconds above 0"),
        (["--timeout", "soon"], "argument --timeout: 'soon' is not a number of seconds"),
        (["--memory", "1e400M"], "argument --memory/-m: '1e400M' is not a size"),
        (["--memory=-1M"], "argument --memory/-m: '-1M' is not a size above 0"),
        (["--memory", "12345"], "argument --memory/-m: '12345': the machine's memory is whole 4 KiB pages"),
        (["--memory", "100T"], "argument --memory/-m: '100T' is more than the 64T hvcore allows"),
        (["--memory", "9" * 5000], "argument --memory/-m: '9999"),
        (["--cpus", "0"], "argument --cpus: '0': a machine has at least 1 vCPU"),
        (["--cpus", "two"], "argument --cpus: 'two' is not a number of vCPUs"),
        (["--until", ""], "argument --until: the text to wait for is empty"),
        (["--until", "\udcff"], "argument --until: not valid UTF-8 (byte 0xff at offset 0)"),
        (["--cmdline", "console=\udcff"], "argument --cmdline: not valid UTF-8 (byte 0xff at offset 8)"),
        (["--cmdline", "a\0b"], "argument --cmdline: 'a\\x00b' holds a NUL character"),
        (["--format", "exe"], "argument --format: invalid choice: 'exe'"),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, list) else "",
)
def test_every_bad_argument_is_one_usage_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    image = tmp_path / "hello.bin"
    image.write_bytes(HELLO_EXIT)  # a guest that ends at once, should an argument slip through
    base = ["run", str(image), "--backend", "sim", "--format", "raw", "-m", "16M", "-q", "--timeout", "20"]
    status = main(base + [a.replace("{tmp}", str(tmp_path)) for a in argv])
    out, err = capsys.readouterr()
    assert status == ExitStatus.USAGE
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("hvcore run: error: " + message.replace("{tmp}", str(tmp_path))), err
    assert err.endswith(" (see 'hvcore run --help')\n")


def test_more_vcpus_than_the_backend_takes_is_a_usage_error(
    tmp_path: Path, hv: Hypervisor, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "hello.bin"
    image.write_bytes(HELLO_EXIT)
    cpus = hv.max_vcpus() + 1
    assert main(["run", str(image), "--backend", hv.name, "--cpus", str(cpus)]) == ExitStatus.USAGE
    assert capsys.readouterr().err == (
        f"hvcore run: error: argument --cpus: {cpus} vCPUs: backend {hv.name!r} takes 1 to {hv.max_vcpus()} "
        f"(its hard limit; it recommends at most {hv.recommended_vcpus()}, its soft limit) (see 'hvcore run --help')\n"
    )


def test_more_vcpus_than_the_backend_recommends_is_a_warning(
    tmp_path: Path, hv: Hypervisor, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "hello.bin"
    image.write_bytes(HELLO_EXIT)
    cpus = hv.recommended_vcpus() + 1
    assert main(["run", str(image), "--backend", hv.name, "--format", "raw", "--cpus", str(cpus), "-q"]) == 0x43
    err = capsys.readouterr().err
    assert err == (
        f"hvcore: warning: {cpus} vCPUs is more than backend {hv.name!r} recommends ({hv.recommended_vcpus()}, its "
        f"soft limit: the host's CPUs); they will share host CPUs (the hard limit is {hv.max_vcpus()})\n"
    )


def test_a_missing_image_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "/nonexistent/image"]) == ExitStatus.USAGE
    assert capsys.readouterr().err.startswith(
        "hvcore run: error: argument image: cannot read image /nonexistent/image: No such file or directory"
    )


def _run_bounded(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m hvcore`` with 1 GiB of address space and a deadline: an unbounded read fails, never swaps."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run(
        [sys.executable, "-m", "hvcore", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=limit,
    )


def test_an_image_that_never_ends_is_refused_before_reading(tmp_path: Path) -> None:
    """``/dev/zero``, a FIFO nobody writes: refused as not regular files, nothing read (it would never end).

    In a subprocess with bounded memory and time: an unbounded read must fail the test, not the host.
    """
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    kernel = tmp_path / "kernel.flat"
    kernel.write_bytes(multiboot_image())
    for path, kind in (("/dev/zero", "a character device"), (str(fifo), "a FIFO")):
        for what, argv in (("image", [path]), ("initrd", [str(kernel), "--initrd", path])):
            try:
                done = _run_bounded("run", *argv, "--backend", "sim", "--timeout", "5")
            except subprocess.TimeoutExpired:
                pytest.fail(f"hvcore run with {what} {path} did not stop: it reads the file without a bound")
            assert done.returncode == ExitStatus.USAGE, done.stderr[-2000:]
            argument = "image" if what == "image" else "--initrd"
            assert done.stderr == (
                f"hvcore run: error: argument {argument}: {what} {path} is {kind}, not a regular file: "
                f"give the {what}'s file (see 'hvcore run --help')\n"
            )


def test_an_image_or_initrd_larger_than_the_machine_is_refused_unread(tmp_path: Path) -> None:
    """Its size says it cannot fit: refused from the size alone (a sparse 64 GiB file is not read)."""
    huge = tmp_path / "huge.bin"
    with huge.open("wb") as file:
        file.truncate(64 << 30)
    kernel = tmp_path / "kernel.flat"
    kernel.write_bytes(multiboot_image())
    for argv, what in (([str(huge)], "image"), ([str(kernel), "--initrd", str(huge)], "initrd")):
        done = _run_bounded("run", *argv, "--backend", "sim", "-m", "32M", "--timeout", "5")
        assert done.returncode == ExitStatus.RUN_FAILED, done.stderr[-2000:]
        assert done.stderr == (
            f"hvcore: error: {what} {huge} is {64 << 30} bytes: larger than the {32 << 20} bytes (32 MiB) the machine "
            f"can hold; give it more memory or use a smaller {what}\n"
        )


def test_read_image_file_stops_at_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "image.bin"
    path.write_bytes(bytes(4097))
    assert read_image_file(str(path), 4097) == bytes(4097)
    with pytest.raises(hvcore.ImageError, match=rf"^image {path} is 4097 bytes: larger than the 4096 bytes"):
        read_image_file(str(path), 4096)
    with pytest.raises(hvcore.ImageError, match="is a character device, not a regular file"):
        read_image_file("/dev/zero", 1 << 20)
    with pytest.raises(hvcore.ImageError, match=rf"cannot read initrd {tmp_path}/none: No such file"):
        read_image_file(str(tmp_path / "none"), 1 << 20, "initrd")


# -- exit statuses: each end its own ---------------------------------------------------------------------

SPIN = b"\xeb\xfe"  # jmp $
TRIPLE_FAULT = (
    b"\x0f\x01\x1e\x10\x10"  # 1000 lidt [0x1010]       (limit 0: no vector can be delivered)
    b"\x0f\x20\xc0"  # 1005 mov eax, cr0
    b"\x0c\x01"  # 1008 or al, 1
    b"\x0f\x22\xc0"  # 100a mov cr0, eax             (protected mode)
    b"\x0f\x0b"  # 100d ud2                       (#UD -> #GP -> #DF -> triple fault)
    b"\x90" + bytes(6)  # 100f  # 1010 the IDT descriptor: limit 0, base 0
)
RUN_FROM_MMIO = b"\xea\x10\x00\xff\xff"  # jmp 0xffff:0x10: code at 0x100000, past 1 MiB of RAM, where no memory is
RESET = b"\xb0\xfe\xe6\x64\xeb\xfe"  # mov al, 0xfe; out 0x64, al (i8042: pulse the reset line); jmp $
POWER_OFF = b"\xba\x04\x06\xb8\x00\x20\xef\xeb\xfe"  # mov dx, 0x604; mov ax, 0x2000; out dx, ax (PM1 SLP_EN, S5)


@pytest.mark.parametrize(
    ("code", "extra", "status", "result"),
    [
        (HELLO_EXIT, [], (0x21 << 1) | 1, "the guest wrote to isa-debug-exit: exit status 67"),
        (HELLO_EXIT, ["--until", "machine"], ExitStatus.OK, "the guest printed 'machine'"),
        (RESET, [], ExitStatus.OK, "the guest reset the machine"),
        (POWER_OFF, [], ExitStatus.OK, "the guest powered off"),
        (SPIN, ["--timeout", "0.5"], ExitStatus.TIMED_OUT, "stopped after 0.5 s (--timeout)"),
        (SPIN, ["--timeout", "0.5", "--until", "x"], ExitStatus.TIMED_OUT, "timed out after 0.5 s without"),
        (TRIPLE_FAULT, [], ExitStatus.GUEST_CRASHED, "the guest crashed: it triple-faulted (SHUTDOWN)"),
        (RUN_FROM_MMIO, [], ExitStatus.GUEST_CRASHED, "the guest crashed: vCPU 0: internal error 1 (EMULATION)"),
        (HELLO_EXIT, ["--trace", "/dev/full"], ExitStatus.RUN_FAILED, "the run failed: cannot write the trace to "
         "/dev/full: No space left on device"),
    ],
    ids=["debug-exit", "until", "reset", "power-off", "timeout", "until-timeout", "triple-fault", "internal-error",
         "vmm-error"],
)  # fmt: skip
def test_each_end_of_a_run_has_its_own_status(
    tmp_path: Path, hv: Hypervisor, capsys: pytest.CaptureFixture[str], code: bytes, extra: list[str], status: int,
    result: str,
) -> None:  # fmt: skip
    image = tmp_path / "guest.bin"
    image.write_bytes(code)
    argv = ["run", str(image), "--backend", hv.name, "--format", "raw", "-m", "1M", "--timeout", "20", *extra]
    assert main(argv) == status
    out, err = capsys.readouterr()
    assert f"\nresult    {result}" in out
    if status in (ExitStatus.RUN_FAILED, ExitStatus.GUEST_CRASHED) or ("--until" in extra and status):
        assert err.startswith(f"hvcore: error: {result}") and err.count("\n") == 1, err  # said once, no "error: error:"
    else:
        assert err == ""


def test_the_exit_statuses_are_even_distinct_and_listed_by_help(capsys: pytest.CaptureFixture[str]) -> None:
    values = [int(status) for status in ExitStatus]
    assert len(set(values)) == len(values)
    assert all(value % 2 == 0 for value in values)  # a guest's (v << 1) | 1 is always odd
    assert (ExitStatus.OK, ExitStatus.USAGE, ExitStatus.TIMED_OUT) == (0, 2, 124)  # POSIX, argparse, timeout(1)
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.endswith(exit_status_help() + "\n")
    for status in ExitStatus:
        assert re.search(rf"^  {int(status):<5} \S", out, re.MULTILINE), status
    assert re.search(r"^  odd   the guest wrote v to isa-debug-exit", out, re.MULTILINE)
