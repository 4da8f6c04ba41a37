"""The source listings of the corpus guests: each instruction's bytes and the Intel-syntax text beside it.

Every guest is written one instruction per line, ``b"..."  # [address] [label:] text``
(``tests/guests/*.py``, ``tests/conformance/cases_*.py``). :func:`listing` finds the run of such
lines whose bytes are a given guest's code, so a test can check what each instruction does to
the flags (``tests.flags``) without a disassembler.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SOURCES = (*sorted((TESTS / "guests").glob("*.py")), *sorted((TESTS / "conformance").glob("cases_*.py")))
"""The modules whose byte literals make up the corpus guests."""

_LINE = re.compile(r'^\s*(b"(?:[^"\\]|\\.)*")\s*,?\s*#\s*(.*)$')
_ADDRESS = re.compile(r"^[0-9A-F]{4,8}\s+")
_LABEL = re.compile(r"^[A-Za-z_][\w]*:\s*")
_NOTE = re.compile(r"\s+(#.*|\(.*\))$")  # "# 0x10aa" after objdump text, "(.code32 from here)"


@dataclass(frozen=True)
class Line:
    """One line of a listing: its bytes and its instruction (None for data: ``.quad``, ``.word``...)."""

    code: bytes
    text: str | None


def _instruction(comment: str) -> str | None:
    text = _LABEL.sub("", _ADDRESS.sub("", comment.strip()))
    while (shorter := _NOTE.sub("", text)) != text:
        text = shorter
    return None if not text or text.startswith(".") else text


@cache
def _listings() -> dict[bytes, tuple[Line, ...]]:
    found: dict[bytes, tuple[Line, ...]] = {}
    for path in SOURCES:
        run: list[Line] = []
        for source_line in [*path.read_text().splitlines(), ""]:
            match = _LINE.match(source_line)
            if match:
                run.append(Line(ast.literal_eval(match.group(1)), _instruction(match.group(2))))
            elif run:
                found.setdefault(b"".join(line.code for line in run), tuple(run))
                run = []
    return found


def listing(code: bytes) -> tuple[Line, ...] | None:
    """The source lines whose bytes are ``code``, in order, or None if no listing has exactly those bytes."""
    return _listings().get(code)
