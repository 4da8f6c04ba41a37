"""The minimal VMM of the README and of the docs' getting-started page runs and prints what it says.

The README's other checks moved with its content to the documentation site: ``tests/test_docs.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import hvcore

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md"])
def test_minimal_vmm_example_prints_5(capsys: pytest.CaptureFixture[str], backend_name: str, page: str) -> None:
    if hvcore.available_backends().get(backend_name) is not None:
        pytest.skip(f"backend {backend_name!r} unusable here: {hvcore.available_backends()[backend_name]}")
    block = re.search(r"```python\n(.*?)```", (ROOT / page).read_text(), re.S)
    assert block is not None, f"{page}: no Python example"
    source = block.group(1).replace('open_hypervisor("auto")', f"open_hypervisor({backend_name!r})")
    exec(compile(source, page, "exec"), {})
    assert capsys.readouterr().out == "5\n"


def test_the_readme_is_the_front_page() -> None:
    """Short, inside the repository, and pointing at the docs pages it replaced."""
    text = (ROOT / "README.md").read_text()
    assert len(text) < 8000, "the README is the front page: the rest belongs in docs/"
    assert "../shared" not in text
    for page in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / page).is_file(), f"README links to {page}, which does not exist"
    assert "nox -s tests" in text
