"""Benchmarks of hvcore against the KVM API used directly (run with ``python -m bench.<name>``)."""
