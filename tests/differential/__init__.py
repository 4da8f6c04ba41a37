"""Differential tests: the simulator against real KVM as its oracle (random guests, identical traces)."""
