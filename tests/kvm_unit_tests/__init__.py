"""kvm-unit-tests, the KVM maintainers' own x86 suite, as a test target for both backends.

``nox -s kvm-unit-tests`` (or ``python -m tests.kvm_unit_tests``) runs every x86 test of a built
kvm-unit-tests tree (``HVCORE_KVM_UNIT_TESTS``: the directory with ``x86/unittests.cfg`` and
``x86/*.flat``) through ``hvcore run`` on each backend, with the arguments from
``x86/unittests.cfg`` that hvcore honours, and prints a table: test, backend, outcome, the guest's
pass/fail/skip counts, time. ``expected.py`` holds the expected outcome per test and backend,
with the reason for every test not expected to pass; the run fails where an outcome differs.

- :mod:`.config`: ``unittests.cfg`` parsed into :class:`UnitTest`, and how hvcore runs each.
- :mod:`.runner`: one test on one backend, in a subprocess under a timeout: a :class:`Result`.
- :mod:`.expected`: the expected outcomes, with reasons.
"""
