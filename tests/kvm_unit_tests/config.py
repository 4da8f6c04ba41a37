"""``x86/unittests.cfg``: each test's image and QEMU arguments, and what ``hvcore run`` makes of them.

The file is INI-like: a ``[name]`` section per test with ``file``, ``smp``, ``test_args`` (older
trees: ``extra_params = -append '...'``), ``qemu_params`` (older: also in ``extra_params``),
``arch``, ``groups``, ``accel`` and ``timeout``. hvcore honours the vCPU count, the test's
command line and ``-m``; every other QEMU argument (a CPU model, extra devices, machine options)
is listed as not honoured, so a result is never read as more than it is.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Invocation", "UnitTest", "invocation", "parse"]

_SECTION = re.compile(r"^\[(?P<name>[^\]]+)\]\s*$")
_KEY = re.compile(r"^(?P<key>\w+)\s*=\s*(?P<value>.*)$")
DEFAULT_TIMEOUT = 90.0
"""Seconds, as kvm-unit-tests' own runner gives a test that names no timeout."""


@dataclass(frozen=True)
class UnitTest:
    """One ``[section]`` of ``unittests.cfg``."""

    name: str
    file: str
    smp: int = 1
    test_args: str = ""
    qemu_params: str = ""
    arch: str = ""
    groups: tuple[str, ...] = ()
    accel: str = ""
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True)
class Invocation:
    """How ``hvcore run`` runs a test: its options, and the QEMU arguments it cannot honour."""

    cpus: int
    memory: str
    cmdline: str
    timeout: float
    not_honoured: tuple[str, ...] = field(default=())

    def arguments(self) -> list[str]:
        """``hvcore run`` options (the image path goes last)."""
        return [
            "--cpus", str(self.cpus), "--memory", self.memory, "--cmdline", self.cmdline,
            "--timeout", f"{self.timeout:g}", "--quiet",
        ]  # fmt: skip


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _split_extra(extra: str) -> tuple[str, str]:
    """Older trees' ``extra_params``: ``-append '...'`` is the test's arguments, the rest QEMU's."""
    words = shlex.split(extra)
    args, rest, i = "", [], 0
    while i < len(words):
        if words[i] == "-append" and i + 1 < len(words):
            args, i = words[i + 1], i + 2
        else:
            rest.append(words[i])
            i += 1
    return args, shlex.join(rest)


def parse(text: str) -> list[UnitTest]:
    """Every test section of ``unittests.cfg`` text, in file order."""
    sections: list[tuple[str, dict[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if match := _SECTION.match(line.strip()):
            sections.append((match["name"], {}))
        elif (match := _KEY.match(line.strip())) and sections:
            sections[-1][1][match["key"]] = match["value"].strip()
    tests = []
    for name, keys in sections:
        args, qemu = _unquote(keys.get("test_args", "")), keys.get("qemu_params", "")
        if "extra_params" in keys:
            extra_args, extra_qemu = _split_extra(keys["extra_params"])
            args, qemu = args or extra_args, " ".join(p for p in (qemu, extra_qemu) if p)
        tests.append(
            UnitTest(
                name=name,
                file=keys.get("file", f"{name}.flat"),
                smp=int(keys.get("smp", "1")),
                test_args=args,
                qemu_params=qemu,
                arch=keys.get("arch", ""),
                groups=tuple(keys.get("groups", "").split()),
                accel=keys.get("accel", ""),
                timeout=float(keys.get("timeout", DEFAULT_TIMEOUT)),
            )
        )
    return tests


def _shell_words(text: str) -> str:
    """``text`` as the shell expands it (``unittests.cfg`` may say ``\\`date +%s\\```), joined by spaces."""
    if not any(c in text for c in "`$"):
        return " ".join(shlex.split(text))
    done = subprocess.run(
        ["bash", "-c", 'eval "set -- $0"; printf "%s " "$@"', text], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def invocation(test: UnitTest, *, timeout_scale: float = 1.0) -> Invocation:
    """What ``hvcore run`` is given for ``test``; the QEMU arguments it cannot honour are listed."""
    words = shlex.split(test.qemu_params)
    memory, ignored, i = "256M", [], 0
    while i < len(words):
        if words[i] == "-m" and i + 1 < len(words):
            memory, i = words[i + 1] + ("M" if words[i + 1].isdigit() else ""), i + 2
        elif words[i].startswith("-") and i + 1 < len(words) and not words[i + 1].startswith("-"):
            ignored.append(f"{words[i]} {words[i + 1]}")
            i += 2
        else:
            ignored.append(words[i])
            i += 1
    return Invocation(test.smp, memory, _shell_words(test.test_args), test.timeout * timeout_scale, tuple(ignored))


def load(tree: Path) -> list[UnitTest]:
    """The tests of a built kvm-unit-tests tree (``tree/x86/unittests.cfg``)."""
    return parse((tree / "x86" / "unittests.cfg").read_text())
