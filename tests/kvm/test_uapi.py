"""Check backends/hvcore_kvm layouts, ioctl numbers and hvcore enums against <linux/kvm.h>.

The Python side is the only list: the test walks ``hvcore_kvm.uapi``,
``hvcore_kvm.ioctls`` and the enums named in ``ENUMS_AGAINST_HEADER``,
generates a C program that prints the header's value for each name
(``sizeof``, ``offsetof``, member sizes, macro values) as ``name value``
lines, compiles it with gcc, runs it and compares.  Every mismatch is
collected and reported at once.

Needs gcc and the kernel headers: ``apt-get install gcc linux-libc-dev``.
"""

from __future__ import annotations

import ctypes
import enum
import importlib
import re
import shutil
import subprocess
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeAlias

import pytest

from hvcore_kvm import ioctls, uapi

KVM_HEADER = Path("/usr/include/linux/kvm.h")
INSTALL_HINT = "apt-get install gcc linux-libc-dev"

ENUMS_AGAINST_HEADER = [
    ("hvcore.exits", "ExitReason", "KVM_EXIT_"),
    ("hvcore.caps", "Capability", "KVM_CAP_"),
    ("hvcore.types", "SlotFlags", "KVM_MEM_"),
    ("hvcore.types", "GuestDebugFlags", "KVM_GUESTDBG_"),
    ("hvcore.types", "MpState", "KVM_MP_STATE_"),
    ("hvcore.types", "IrqchipId", "KVM_IRQCHIP_"),
    ("hvcore.exits", "SystemEventType", "KVM_SYSTEM_EVENT_"),
    ("hvcore.exits", "InternalErrorSuberror", "KVM_INTERNAL_ERROR_"),
]
"""(module, IntEnum/IntFlag class, macro prefix): member NAME == macro PREFIX+NAME."""

REQUIRED_KVM_RUN_MEMBERS = (
    "exit_reason",
    "ready_for_interrupt_injection",
    "if_flag",
    "cr8",
    "apic_base",
    "io.direction",
    "io.size",
    "io.port",
    "io.count",
    "io.data_offset",
    "mmio.phys_addr",
    "mmio.data",
    "mmio.len",
    "mmio.is_write",
    "debug.arch.exception",
    "debug.arch.pc",
    "debug.arch.dr6",
    "debug.arch.dr7",
    "internal.suberror",
    "internal.ndata",
    "internal.data",
    "system_event.type",
    "system_event.ndata",
    "fail_entry.hardware_entry_failure_reason",
    "fail_entry.cpu",
    "hw.hardware_exit_reason",
    "kvm_valid_regs",
    "s",
)
"""C member designators of struct kvm_run that the layout check must cover."""

FLEX_ARRAYS: list[tuple[str, Callable[[int], type[ctypes.Structure]], str]] = [
    ("kvm_msrs", uapi.msrs_with, "entries"),
    ("kvm_msr_list", uapi.msr_list_with, "indices"),
    ("kvm_cpuid2", uapi.cpuid2_with, "entries"),
    ("kvm_irq_routing", uapi.irq_routing_with, "entries"),
]
"""(C struct, uapi factory, flexible array member)."""

CStruct: TypeAlias = type[ctypes.Structure | ctypes.Union]
Header: TypeAlias = dict[str, int | None]
_MACRO_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


# ----------------------------------------------------------------- Python side


def camel_to_snake(name: str) -> str:
    """``KvmCpuidEntry2`` -> ``kvm_cpuid_entry2`` (digits do not split)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def c_name(cls: CStruct) -> str:
    """The C struct name of a uapi class: its own ``C_NAME`` if set, else camel->snake."""
    own = cls.__dict__.get("C_NAME")
    return own if isinstance(own, str) else camel_to_snake(cls.__name__)


def c_type(cls: CStruct) -> str:
    """``struct <name>`` (or ``union <name>``) for a named uapi class."""
    keyword = "union" if issubclass(cls, ctypes.Union) else "struct"
    return f"{keyword} {c_name(cls)}"


def uapi_classes() -> list[CStruct]:
    """Every Structure/Union class defined at module level in uapi."""
    return [
        obj
        for obj in vars(uapi).values()
        if isinstance(obj, type)
        and issubclass(obj, ctypes.Structure | ctypes.Union)
        and obj.__module__ == uapi.__name__
    ]


def named_structs() -> dict[str, CStruct]:
    """C name -> class, for the uapi classes that are C structs (C_NAME != "")."""
    return {c_name(cls): cls for cls in uapi_classes() if c_name(cls)}


def is_aggregate(ctype: type) -> bool:
    """True for ctypes Structure/Union types (which have members of their own)."""
    return issubclass(ctype, ctypes.Structure | ctypes.Union)


def members(cls: CStruct, prefix: str = "", base: int = 0) -> Iterator[tuple[str, int, int]]:
    """(C member designator, offset, size) of every member, recursively.

    Fields listed in ``_anonymous_`` stand for C anonymous unions/structs:
    they do not appear in the designator, their members do.
    """
    anonymous = set(getattr(cls, "_anonymous_", ()))
    for name, ctype, *_ in cls._fields_:
        offset = base + getattr(cls, name).offset
        if name in anonymous:
            yield from members(typing.cast(CStruct, ctype), prefix, offset)
            continue
        designator = prefix + name
        yield designator, offset, ctypes.sizeof(ctype)
        if is_aggregate(ctype):
            yield from members(typing.cast(CStruct, ctype), designator + ".", offset)


def module_constants(module: ModuleType, prefix: str = "") -> dict[str, int]:
    """Module-level plain ints whose names look like C macros (and start with prefix)."""
    return {
        name: value
        for name, value in vars(module).items()
        if type(value) is int and _MACRO_NAME.fullmatch(name) and name.startswith(prefix)
    }


def ioctl_constants() -> dict[str, int]:
    """The ``KVM_*`` ints of hvcore_kvm.ioctls, plus KVMIO."""
    return {"KVMIO": ioctls.KVMIO, **module_constants(ioctls, "KVM_")}


def load_enum(module_name: str, class_name: str) -> type[enum.Enum] | str:
    """The enum class, or the reason it does not exist yet."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            return f"module {module_name} does not exist yet"
        raise
    cls = getattr(module, class_name, None)
    if cls is None:
        return f"{module_name}.{class_name} does not exist yet"
    if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
        raise TypeError(f"{module_name}.{class_name} is not an Enum: {cls!r}")
    return cls


def enum_macro_names() -> list[str]:
    """Every PREFIX+NAME macro the loadable enums of ENUMS_AGAINST_HEADER ask about."""
    names: list[str] = []
    for module_name, class_name, prefix in ENUMS_AGAINST_HEADER:
        try:
            cls = load_enum(module_name, class_name)
        except Exception:  # reported by test_enum_matches_header itself
            continue
        if not isinstance(cls, str):
            names += [prefix + m for m in cls.__members__ if _MACRO_NAME.fullmatch(m)]
    return names


# ---------------------------------------------------------------------- C side

_C_PRELUDE = r"""
#include <stddef.h>
#include <stdio.h>
#include <linux/kvm.h>

static void value(const char *name, int negative, long long v)
{
    if (negative)
        printf("macro:%s %lld\n", name, v);
    else
        printf("macro:%s %llu\n", name, (unsigned long long)v);
}

#define MACRO(N) value(#N, (N) < 0, (long long)(N))
#define ABSENT(N) printf("macro:%s absent\n", #N)
#define SIZE(KEY, T) printf("sizeof:%s %zu\n", KEY, sizeof(T))
#define MEMBER(KEY, T, M) \
    printf("offsetof:%s:%s %zu\nmembersize:%s:%s %zu\n", \
           KEY, #M, offsetof(T, M), KEY, #M, sizeof(((T *)0)->M))

int main(void)
{
"""


def render_program(macros: list[str], designators: dict[str, list[str]]) -> str:
    """C source printing each macro's value and each struct's size and member layout."""
    lines = [_C_PRELUDE]
    for name in sorted(set(macros)):
        lines += [f"#ifdef {name}", f"    MACRO({name});", "#else", f"    ABSENT({name});", "#endif"]
    structs = named_structs()
    for name, paths in designators.items():
        ctype = c_type(structs[name])
        lines.append(f'    SIZE("{name}", {ctype});')
        lines += [f'    MEMBER("{name}", {ctype}, {path});' for path in paths]
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


def parse_output(text: str) -> Header:
    """``key value`` lines -> dict; ``absent`` macros map to None."""
    result: Header = {}
    for line in text.splitlines():
        key, _, raw = line.rpartition(" ")
        result[key] = None if raw == "absent" else int(raw)
    return result


@pytest.fixture(scope="module")
def header(tmp_path_factory: pytest.TempPathFactory) -> Header:
    """Compile and run the generated program; its output as a dict."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip(f"gcc is not on PATH; install it with `{INSTALL_HINT}`")
    if not KVM_HEADER.is_file():
        pytest.skip(f"{KVM_HEADER} does not exist; install it with `{INSTALL_HINT}`")

    macros = [*ioctl_constants(), *module_constants(uapi), *enum_macro_names()]
    designators = {name: [path for path, _, _ in members(cls)] for name, cls in named_structs().items()}
    for name, _, array in FLEX_ARRAYS:
        designators.setdefault(name, []).append(f"{array}[0]")

    tmp = tmp_path_factory.mktemp("kvm_uapi")
    source, program = tmp / "kvm_uapi.c", tmp / "kvm_uapi"
    source.write_text(render_program(macros, designators))
    build = subprocess.run(
        [gcc, "-std=gnu11", "-o", str(program), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    if build.returncode != 0:
        errors = dict.fromkeys(line for line in build.stderr.splitlines() if "error:" in line)
        pytest.fail(
            f"gcc could not compile {source} (a uapi/ioctls/enum name that is not in "
            f"the header?):\n" + "\n".join(errors or [build.stderr]),
            pytrace=False,
        )
    run = subprocess.run([str(program)], capture_output=True, text=True, check=True)
    return parse_output(run.stdout)


def _lookup(header: Header, key: str) -> int | None:
    assert key in header, f"{key} was not generated into the C program"
    return header[key]


def _compare_constants(header: Header, constants: dict[str, int], where: str) -> None:
    mismatches: list[str] = []
    absent: list[str] = []
    for name, value in sorted(constants.items()):
        c_value = _lookup(header, f"macro:{name}")
        if c_value is None:
            absent.append(name)
        elif c_value != value:
            mismatches.append(f"{where}.{name} = {value:#x}, header says {c_value:#x}")
    skipped = f"skipped, not macros in {KVM_HEADER}: {', '.join(absent)}" if absent else ""
    assert not mismatches, "\n".join([*mismatches, skipped])
    if absent:  # not a failure; pyproject turns warnings into errors, so print
        print(f"{where}: {skipped}")


# ----------------------------------------------------------------------- tests


def test_ioctl_numbers_match_header(header: Header) -> None:
    """Every KVM_* constant of ioctls.py (and KVMIO) equals the C macro."""
    _compare_constants(header, ioctl_constants(), "ioctls")


def test_uapi_constants_match_header(header: Header) -> None:
    """The array-size constants of uapi.py equal the C macros."""
    _compare_constants(header, module_constants(uapi), "uapi")


def test_struct_layouts_match_header(header: Header) -> None:
    """sizeof of every uapi struct, and offset/size of every (nested) member."""
    problems: list[str] = []
    for name, cls in named_structs().items():
        c_size = _lookup(header, f"sizeof:{name}")
        if c_size != ctypes.sizeof(cls):
            problems.append(f"sizeof({name}): {cls.__name__} {ctypes.sizeof(cls)}, C {c_size}")
        for path, offset, size in members(cls):
            c_offset = _lookup(header, f"offsetof:{name}:{path}")
            c_member = _lookup(header, f"membersize:{name}:{path}")
            if c_offset != offset:
                problems.append(f"offsetof({name}, {path}): python {offset}, C {c_offset}")
            if c_member != size:
                problems.append(f"sizeof({name}.{path}): python {size}, C {c_member}")
    assert not problems, "\n".join(problems)


def test_kvm_run_members_are_checked() -> None:
    """The kvm_run members the exit decoder relies on are in the layout check."""
    covered = {path for path, _, _ in members(uapi.KvmRun)}
    missing = [path for path in REQUIRED_KVM_RUN_MEMBERS if path not in covered]
    assert not missing, f"uapi.KvmRun lacks C members: {', '.join(missing)}"


@pytest.mark.parametrize(("name", "factory", "array"), FLEX_ARRAYS, ids=[f[0] for f in FLEX_ARRAYS])
def test_flexible_array_factories(
    header: Header, name: str, factory: Callable[[int], type[ctypes.Structure]], array: str
) -> None:
    """The ``*_with(n)`` types put n entries where the C flexible array starts."""
    base = named_structs()[name]
    c_offset = _lookup(header, f"offsetof:{name}:{array}[0]")
    c_entry = _lookup(header, f"membersize:{name}:{array}[0]")
    assert c_offset is not None
    assert c_entry is not None
    three = factory(3)
    assert factory(3) is three, "factory results must be cached"
    assert issubclass(three, base)
    assert getattr(three, array).offset == c_offset
    assert ctypes.sizeof(factory(0)) == ctypes.sizeof(base) == _lookup(header, f"sizeof:{name}")
    assert ctypes.sizeof(three) == c_offset + 3 * c_entry
    with pytest.raises(ValueError, match="entry count"):
        factory(-1)


@pytest.mark.parametrize(
    ("module_name", "class_name", "prefix"),
    ENUMS_AGAINST_HEADER,
    ids=[f"{m}.{c}" for m, c, _ in ENUMS_AGAINST_HEADER],
)
def test_enum_matches_header(header: Header, module_name: str, class_name: str, prefix: str) -> None:
    """Every member NAME of the enum equals the C macro PREFIX+NAME."""
    cls = load_enum(module_name, class_name)
    if isinstance(cls, str):
        pytest.skip(cls)
    mismatches: list[str] = []
    absent: list[str] = []
    for member_name, member in cls.__members__.items():
        macro = prefix + member_name
        c_value = _lookup(header, f"macro:{macro}") if _MACRO_NAME.fullmatch(member_name) else None
        if c_value is None:
            absent.append(macro)
        elif int(member.value) != c_value:
            mismatches.append(f"{class_name}.{member_name} = {int(member.value)}, {macro} = {c_value}")
    skipped = f"skipped, not in this header: {', '.join(absent)}" if absent else ""
    assert len(absent) < len(cls.__members__), (
        f"no member of {module_name}.{class_name} is a {prefix}* macro ({skipped})"
    )
    assert not mismatches, "\n".join([*mismatches, skipped])
    if absent:  # not a failure; pyproject turns warnings into errors, so print
        print(f"{module_name}.{class_name}: {skipped}")


# ------------------------------------------------- pure Python consistency checks


def test_ioctl_names_cover_every_ioctl() -> None:
    """IOCTL_NAMES names every request number, with no two macros sharing one."""
    requests = {n: v for n, v in ioctl_constants().items() if (v >> 8) & 0xFF == ioctls.KVMIO}
    assert "KVM_API_VERSION" not in requests
    assert "KVM_RUN" in requests
    wrong = [n for n, v in requests.items() if ioctls.IOCTL_NAMES.get(v) != n]
    assert not wrong, {n: ioctls.IOCTL_NAMES.get(requests[n]) for n in wrong}
    assert len(ioctls.IOCTL_NAMES) == len(requests)


def _hint_matches(hint: Any, ctype: type) -> bool:
    """int for scalars, the class for structs, ``ctypes.Array[element]`` for arrays."""
    if issubclass(ctype, ctypes.Array):
        element = typing.cast(type, ctype._type_)
        args = typing.get_args(hint)
        return (
            typing.get_origin(hint) is ctypes.Array
            and len(args) == 1
            and (_hint_matches(args[0], element) if issubclass(element, ctypes.Array) else args[0] is element)
        )
    if is_aggregate(ctype):
        return hint is ctype
    return hint is int


def test_field_annotations_match_fields() -> None:
    """Each field (and hoisted anonymous member) is annotated with its Python type."""
    problems: list[str] = []
    for cls in uapi_classes():
        hints = {
            name: hint
            for name, hint in typing.get_type_hints(cls).items()
            if typing.get_origin(hint) is not typing.ClassVar
        }
        direct = {name: ctype for name, ctype, *_ in cls._fields_}
        hoisted: dict[str, type] = {}
        for anonymous in getattr(cls, "_anonymous_", ()):
            union = typing.cast(CStruct, direct[anonymous])
            hoisted.update({name: ctype for name, ctype, *_ in union._fields_})
        problems += [f"{cls.__name__}.{n}: field without annotation" for n in direct if n not in hints]
        for name, hint in hints.items():
            ctype = direct.get(name) or hoisted.get(name)
            if ctype is None:
                problems.append(f"{cls.__name__}.{name}: annotation without field")
            elif not _hint_matches(hint, ctype):
                problems.append(f"{cls.__name__}.{name}: annotated {hint}, field is {ctype}")
    assert not problems, "\n".join(problems)


def test_docstrings_quote_the_c_declaration() -> None:
    """Every named struct's docstring quotes ``struct <name>``."""
    missing = [cls.__name__ for name, cls in named_structs().items() if f"struct {name}" not in (cls.__doc__ or "")]
    assert not missing, f"docstring does not quote the C declaration: {', '.join(missing)}"
