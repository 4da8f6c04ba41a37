"""The ``kvm`` backend: Linux ``/dev/kvm`` through ioctls.

One module per file-descriptor type, as in rust-vmm's kvm-ioctls:
:mod:`.system` (``/dev/kvm``), :mod:`.vm`, :mod:`.vcpu`; :mod:`.uapi` holds every
struct layout, :mod:`.ioctls` every ioctl number, :mod:`._sys` the one ioctl
call site, :mod:`.kvm_run` the exit decoding, :mod:`.convert` the translation
to hvcore's neutral types.
"""

from backends.kvm.kick import install_kick_handler
from backends.kvm.system import BACKEND, KvmBackend, KvmHypervisor
from backends.kvm.vcpu import KvmVCPU
from backends.kvm.vm import KvmVM

__all__ = ["BACKEND", "KvmBackend", "KvmHypervisor", "KvmVCPU", "KvmVM", "install_kick_handler"]
