"""The API reference: which module renders on which page, with which members, and the check that all of them did.

An API page holds placeholders ``<!-- api: ITEM ITEM ... -->``. An item is a module (``hvcore.x86``:
that module alone) or a module and everything below it (``hvcore.vmm.pci.*``); a module named
exactly elsewhere, or under a longer ``.*`` prefix, renders there instead. Each module becomes a
mkdocstrings directive (``::: module``) whose members are the names of its ``__all__`` not rendered
earlier in the site (pages in nav order): a name re-exported by a package renders once, where the
package renders it (``hvcore.Regs``, not again as ``hvcore.types.Regs``), and a package's names
are grouped by the module that defines them.

After the build, :func:`unrendered` reads the site's ``objects.inv`` and lists every public name
that did not render; the hook turns each into a warning, which ``mkdocs build --strict`` makes an
error. A public module no placeholder claims is a warning too, so a new module cannot be left out.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType

__all__ = [
    "PLACEHOLDER",
    "ROOT_PACKAGES",
    "Definition",
    "Plan",
    "Section",
    "definition",
    "inventory",
    "plan",
    "public_modules",
    "unrendered",
]

PLACEHOLDER = re.compile(r"^<!-- api: (?P<items>[^>]*?) -->$", re.MULTILINE)
"""An API placeholder line in a page's Markdown."""

ROOT_PACKAGES = ("hvcore",)
"""The packages whose every public module must render (the backends render where their pages name them)."""


@dataclass(frozen=True)
class Definition:
    """Where a public name is defined (after following ``from X import Y``), and what the source says of it."""

    module: str
    name: str
    docstring: bool
    """Whether the definition has a docstring (a class's or function's, or a string right after an assignment)."""
    unpacked: bool = False
    """Defined by a tuple assignment (``A, B = 1, 2``), which mkdocstrings' loader (griffe) does not see."""

    @property
    def path(self) -> str:
        """The dotted path of the definition."""
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class Section:
    """One module on a page: the members it renders (``(defining module, names)`` groups, in ``__all__`` order)."""

    module: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def members(self) -> tuple[str, ...]:
        """Every name this section renders."""
        return tuple(name for _, names in self.groups for name in names)

    def markdown(self) -> str:
        """The mkdocstrings directives: the module's docstring, then its members grouped by defining module."""
        blocks = [f"::: {self.module}\n    options:\n      members: false"]
        if len(self.groups) == 1 and self.groups[0][0] == self.module:
            listed = ", ".join(self.groups[0][1])
            blocks = [f"::: {self.module}\n    options:\n      members: [{listed}]"]
        else:
            for defined_in, names in self.groups:
                blocks.append(
                    f"### `{self.module}`: from `{defined_in}` {{ #{self.module}--from-{defined_in} }}\n\n"
                    f"::: {self.module}\n    options:\n      members: [{', '.join(names)}]\n"
                    "      show_root_heading: false\n      show_root_toc_entry: false\n      heading_level: 4"
                )
        return "\n\n".join(blocks)


@dataclass
class Plan:
    """Every API page's sections (by page path), and what could not be placed."""

    pages: dict[str, list[Section]] = field(default_factory=dict)
    unclaimed: list[str] = field(default_factory=list)
    """Public modules that no placeholder claims."""
    missing: list[str] = field(default_factory=list)
    """Items a placeholder names that are not importable modules."""

    def sections(self) -> Iterator[Section]:
        """Every section of every page."""
        for sections in self.pages.values():
            yield from sections

    def expected(self) -> dict[str, Definition]:
        """Each identifier the site must render (``module.name``) and its definition."""
        return {f"{s.module}.{n}": _definition_of(s.module, n) for s in self.sections() for n in s.members}


def _is_public(name: str) -> bool:
    return not any(part.startswith("_") for part in name.split("."))


def public_modules(package: str) -> list[str]:
    """``package`` and every module below it whose dotted name has no part starting with ``_``, package first."""
    root = importlib.import_module(package)
    found = [package]
    for info in pkgutil.walk_packages(getattr(root, "__path__", []), prefix=f"{package}."):
        if _is_public(info.name):
            found.append(info.name)
    return found


@cache
def _tree(module: str) -> ast.Module:
    source = importlib.import_module(module).__file__
    if source is None:
        raise ValueError(f"{module} has no source file")
    return ast.parse(Path(source).read_text())


def _is_package(module: str) -> bool:
    return hasattr(importlib.import_module(module), "__path__")


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    if not _is_package(module):
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def _assigned_names(node: ast.stmt) -> tuple[list[str], bool]:
    """The names a top-level assignment binds, and whether it unpacks a tuple."""
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id], False
    if isinstance(node, ast.Assign):
        names: list[str] = []
        unpacked = False
        for target in node.targets:
            if isinstance(target, ast.Name):
                names.append(target.id)
            elif isinstance(target, ast.Tuple):
                unpacked = True
                names += [e.id for e in target.elts if isinstance(e, ast.Name)]
        return names, unpacked
    return [], False


def _is_docstring(node: ast.stmt | None) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def definition(module: str, name: str) -> Definition | None:
    """Where ``module.name`` is defined, following ``from ... import``; None when it names a module."""
    body = _tree(module).body
    for node in body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    source = _absolute(module, node)
                    if isinstance(getattr(importlib.import_module(source), alias.name, None), ModuleType):
                        return None
                    return definition(source, alias.name)
        elif isinstance(node, ast.Import) and any((alias.asname or alias.name) == name for alias in node.names):
            return None
    for index, node in enumerate(body):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return Definition(module, name, ast.get_docstring(node) is not None)
        names, unpacked = _assigned_names(node)
        if name in names:
            following = body[index + 1] if index + 1 < len(body) else None
            return Definition(module, name, _is_docstring(following) and not unpacked, unpacked)
    return Definition(module, name, docstring=True)  # bound some other way: nothing to say about it


def _definition_of(module: str, name: str) -> Definition:
    found = definition(module, name)
    return found if found is not None else Definition(module, name, docstring=True)


def _items(text: str) -> list[str]:
    return [item for match in PLACEHOLDER.finditer(text) for item in match["items"].split()]


def plan(pages: Sequence[tuple[str, str]]) -> Plan:
    """Place every public module on the page that claims it; give each section its members (see the module doc).

    ``pages`` is each page's path and Markdown, in nav order.
    """
    result = Plan()
    exact: dict[str, str] = {}
    prefixes: list[tuple[str, str]] = []  # (prefix, page)
    for page, text in pages:
        for item in _items(text):
            if item.endswith(".*"):
                prefixes.append((item[:-2], page))
            else:
                exact.setdefault(item, page)

    def owner(module: str) -> str | None:
        if module in exact:
            return exact[module]
        claims = [(len(p), page) for p, page in prefixes if module == p or module.startswith(p + ".")]
        return max(claims)[1] if claims else None

    modules: list[str] = []
    for page, text in pages:
        for item in _items(text):
            base = item.removesuffix(".*")
            try:
                found = public_modules(base) if item.endswith(".*") else [base]
                importlib.import_module(base)
            except ImportError:
                result.missing.append(item)
                continue
            modules += [m for m in found if owner(m) == page and m not in modules]
    for package in ROOT_PACKAGES:
        result.unclaimed += [m for m in public_modules(package) if m not in modules]

    seen: set[str] = set()
    for module in modules:
        claimed_by = owner(module)
        assert claimed_by is not None
        result.pages.setdefault(claimed_by, []).append(_section(module, seen, modules))
    return result


def _section(module: str, seen: set[str], order: Sequence[str]) -> Section:
    """``module``'s section: the names of its ``__all__`` whose definitions no earlier section rendered.

    Groups come in the order their defining modules render in (``order``), then the others.
    """
    groups: dict[str, list[str]] = {}
    for name in getattr(importlib.import_module(module), "__all__", ()):
        if name.startswith("_"):
            continue  # __version__ and the like: dunders are not rendered
        found = definition(module, name)
        if found is None or found.path in seen:
            continue
        seen.add(found.path)
        groups.setdefault(found.module, []).append(name)
    rank = {name: index for index, name in enumerate(order)}
    ordered = sorted(groups.items(), key=lambda group: rank.get(group[0], len(rank)))
    return Section(module, tuple((defined_in, tuple(names)) for defined_in, names in ordered))


def expand(text: str, sections: Iterable[Section]) -> str:
    """``text`` with each placeholder replaced by the directives of the sections its items placed on this page."""
    by_module = {s.module: s for s in sections}

    def replace(match: re.Match[str]) -> str:
        items = match["items"].split()
        wanted = [
            s
            for s in by_module.values()
            if any(s.module == i or (i.endswith(".*") and (s.module + ".").startswith(i[:-1])) for i in items)
        ]
        for section in wanted:
            by_module.pop(section.module)
        return "\n\n".join(section.markdown() for section in wanted)

    return PLACEHOLDER.sub(replace, text)


def inventory(path: Path) -> set[str]:
    """The identifiers in a Sphinx ``objects.inv`` (what mkdocstrings rendered)."""
    data = path.read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = data.index(b"\n", header_end) + 1
    text = zlib.decompress(data[header_end:]).decode()
    return {line.split(" ", 1)[0] for line in text.splitlines() if line.strip()}


def unrendered(expected: Mapping[str, Definition], rendered: set[str]) -> list[tuple[str, Definition]]:
    """The expected identifiers missing from ``rendered``, with their definitions."""
    return [(identifier, found) for identifier, found in expected.items() if identifier not in rendered]
