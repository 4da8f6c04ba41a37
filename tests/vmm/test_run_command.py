"""``hvcore run`` end to end: console, exit status, trace file, statistics and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvcore import Hypervisor, IoExit, trace
from hvcore.cli import main
from hvcore.vmm.run import RUN_FAILED
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
        (["--memory", "12345"], "whole pages"),
    ],
)
def test_run_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    image = tmp_path / "junk.bin"
    image.write_bytes(bytes(range(256)) * 8)
    status = main(["run", str(image), "--backend", "sim", *argv])
    err = capsys.readouterr().err
    assert status == RUN_FAILED  # even: never a guest's isa-debug-exit verdict
    assert err.startswith("hvcore: error: ") and message in err and err.count("\n") == 1


def test_run_a_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "/nonexistent/image"]) == RUN_FAILED
    assert "cannot read /nonexistent/image" in capsys.readouterr().err


def test_a_failed_run_never_reads_as_a_guest_verdict(tmp_path: Path, hv: Hypervisor) -> None:
    """Text that never came is a failure: status 4 (even), never 1 (a kvm-unit-test's pass)."""
    image = tmp_path / "spin.bin"
    image.write_bytes(b"\xeb\xfe")  # jmp $
    argv = ["run", str(image), "--backend", hv.name, "--format", "raw", "-m", "16M", "-q"]
    argv += ["--until", "x", "--timeout", "1"]
    assert main(argv) == RUN_FAILED
