"""Guest-driven device fuzzing (``nox -s fuzz-devices``)."""
