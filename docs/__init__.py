"""What the documentation site generates at build time (``mkdocs.yml`` loads :mod:`docs.hooks`).

Not part of the installed packages: the repository's ``docs/`` directory, importable from its root
(the tests import :mod:`docs.tables` to check the generated tables against their registries).
"""
