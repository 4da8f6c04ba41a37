"""hvcore's logging: the ``hvcore`` logger hierarchy, silent unless the application turns it on.

Every module logs under ``hvcore`` (``hvcore.kvm``, ``hvcore.sim``, ``hvcore.vmm.machine``,
``hvcore.vmm.bus``, ``hvcore.vmm.pci``, ``hvcore.vmm.virtio``), and the package installs a
``NullHandler``, as a library should: nothing is printed until the application configures
logging. What each level says:

- WARNING: the guest did something a device refuses (a malformed virtqueue, a BAR over RAM);
- INFO: what the machine is and did: devices plugged in, a run's start and end, exit counts,
  device accesses by device, BARs moved;
- DEBUG: every exit, every device access, every KVM ioctl (``KVM_RUN`` itself excepted: see the
  exits).

:func:`enable` sends the records to stderr (``hvcore run -v`` / ``-vv`` does it); setting
``HVCORE_LOG`` to a level name (``debug``, ``info``, ``warning``) does it when hvcore is imported,
without changing the application.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Final, TextIO

__all__ = ["ENVIRONMENT_VARIABLE", "ROOT", "enable", "enable_from_environment", "get_logger"]

ROOT: Final = "hvcore"
"""The top of hvcore's logger hierarchy."""
ENVIRONMENT_VARIABLE: Final = "HVCORE_LOG"
"""A level name here turns logging on to stderr at import (``HVCORE_LOG=debug``)."""
_FORMAT: Final = "%(relativeCreated)9.1f ms %(levelname)-7s %(name)s: %(message)s"
_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

logging.getLogger(ROOT).addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """The logger ``hvcore.<name>`` (``name`` without the prefix, e.g. ``"vmm.bus"``)."""
    return logging.getLogger(f"{ROOT}.{name}")


def enable(level: int = logging.INFO, stream: TextIO | None = None) -> logging.Handler:
    """Send hvcore's records at ``level`` and above to ``stream`` (stderr); the handler, to remove later."""
    root = logging.getLogger(ROOT)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def enable_from_environment() -> logging.Handler | None:
    """:func:`enable` at the level :data:`ENVIRONMENT_VARIABLE` names; nothing when it is unset or empty.

    An unknown level name is reported (a ``RuntimeWarning``: logging is not on yet) and ignored.
    """
    name = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if not name:
        return None
    level = _LEVELS.get(name)
    if level is None:
        message = f"{ENVIRONMENT_VARIABLE}={name!r} is not a level; say one of {', '.join(_LEVELS)}"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return None
    return enable(level)
