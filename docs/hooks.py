"""mkdocs hooks (``hooks:`` in ``mkdocs.yml``): the pages' generated parts, the API reference, and its check.

- ``<!-- generated: NAME -->`` lines become the tables of :mod:`docs.tables` (from the quirk registry,
  the host deviations, ``expected.py``, the recorded benchmark results, the changelog);
- ``<!-- api: ... -->`` lines become mkdocstrings directives, one per module (:mod:`docs.apiref`);
- Sphinx roles in rendered docstrings (``:class:`hvcore.Regs```) become links where the name renders;
- after the build, every public name must be in the site's ``objects.inv``: one that is not is a
  warning (an error under ``--strict``), as is a public module no API page claims. Public names
  without a docstring are listed too: as warnings where ``extra.hvcore_docs.require_docstrings``
  is true in ``mkdocs.yml``, else at info level.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
# The generators read the test suite's registries (tests.quirks, tests.kvm_unit_tests.expected): the
# repository root must be importable, as it is for pytest. hvcore itself comes from the docs environment.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from docs import apiref, tables  # noqa: E402

log = logging.getLogger("mkdocs.plugins.hvcore_docs")

GENERATED = re.compile(r"^<!-- generated: (?P<name>[a-z0-9-]+) -->$", re.MULTILINE)
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|data|attr|mod|exc|obj|const):<code>(?P<target>~?\.?[\w.]+)</code>")


class _File(Protocol):
    src_uri: str


class _Page(Protocol):
    file: _File


_plan = apiref.Plan()
_short: dict[str, str] = {}
"""Unqualified name -> the one rendered identifier ending with it (names rendered twice are left out)."""


def on_config(config: Mapping[str, Any]) -> None:
    """Plan the API reference: read the API placeholders of every page in nav order."""
    global _plan
    docs = Path(config["docs_dir"])
    pages = [(path, (docs / path).read_text()) for path in _nav_pages(config["nav"])]
    _plan = apiref.plan(pages)
    for module in _plan.unclaimed:
        log.warning("API reference: no page claims the public module %s (add it to an <!-- api: --> line)", module)
    for item in _plan.missing:
        log.warning("API reference: %s is not an importable module", item)
    _short.clear()
    counts: dict[str, int] = {}
    for identifier in _plan.expected():
        name = identifier.rsplit(".", 1)[-1]
        counts[name] = counts.get(name, 0) + 1
        _short[name] = identifier
    for name, count in counts.items():
        if count > 1:
            del _short[name]


def _nav_pages(nav: object) -> list[str]:
    """Every Markdown page of the nav, in order."""
    if isinstance(nav, str):
        return [nav] if nav.endswith(".md") else []
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    if isinstance(nav, list):
        return [page for entry in nav for page in _nav_pages(entry)]
    return []


def on_page_markdown(markdown: str, /, *, page: _Page, config: object, files: object) -> str:
    """Put the generated tables and the API directives into the page."""

    def generate(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in tables.GENERATORS:
            log.warning("%s: no generated table %r (known: %s)", page.file.src_uri, name, ", ".join(tables.GENERATORS))
            return ""
        return tables.GENERATORS[name]()

    markdown = GENERATED.sub(generate, markdown)
    return apiref.expand(markdown, _plan.pages.get(page.file.src_uri, ()))


def on_page_content(html: str, /, *, page: object, config: object, files: object) -> str:
    """Turn the Sphinx roles of docstrings into cross-references (optional: unknown names stay plain code)."""

    def link(match: re.Match[str]) -> str:
        target = match["target"]
        shown = target.rsplit(".", 1)[-1] if target.startswith("~") else target.lstrip(".")
        identifier = target.lstrip("~").lstrip(".")
        if "." not in identifier:
            identifier = _short.get(identifier, identifier)
        return f'<autoref identifier="{identifier}" optional><code>{shown}</code></autoref>'

    return ROLE.sub(link, html)


def on_post_build(config: Mapping[str, Any]) -> None:
    """Check that every public name rendered (and say which have no docstring)."""
    inventory = Path(config["site_dir"]) / "objects.inv"
    if not inventory.exists():
        log.warning("API reference: no objects.inv was written, so nothing can be checked")
        return
    expected = _plan.expected()
    rendered = apiref.inventory(inventory)
    for identifier, found in apiref.unrendered(expected, rendered):
        if found.unpacked:
            log.info("API reference: %s is not rendered: %s assigns it by unpacking a tuple, which mkdocstrings "
                     "does not see (one assignment per name renders)", identifier, found.module)  # fmt: skip
        else:
            log.warning("API reference: the public name %s did not render", identifier)
    undocumented = sorted({found.path for found in expected.values() if not found.docstring})
    if undocumented:
        settings = (config.get("extra") or {}).get("hvcore_docs") or {}
        report = log.warning if settings.get("require_docstrings") else log.info
        report("API reference: %d public names have no docstring: %s", len(undocumented), ", ".join(undocumented))
    log.info("API reference: %d public names, %d rendered", len(expected), len(set(expected) & rendered))
