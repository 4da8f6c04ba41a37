"""The conformance corpus: guest programs with their set-up, host script and exact expected outcome.

Each :class:`tests.conformance.harness.Case` runs on every available backend
(``tests/conformance/test_corpus.py``). The expected outcome is stated once, as upstream KVM
behaves; the known divergences of this host's KVM and of the simulator are the entries of the
registry in :mod:`tests.quirks`, and a case names the ones it may meet. Anything else that
differs fails with a field-by-field diff.

Cases by area (one module each, under ~400 lines): ``cases_io`` (port IO, string IO),
``cases_mmio`` (MMIO lengths, read-modify-write, read-only and removed slots, paging),
``cases_events`` (injection, windows, NMI, exception delivery, triple fault),
``cases_control`` (single-step, kick, immediate exit, unbacked execution, MSRs),
``cases_machine`` (mode switches, dirty logging, several vCPUs, boot from the reset vector).
"""
