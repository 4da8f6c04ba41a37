"""The ``kvm`` backend: Linux ``/dev/kvm`` through ioctls.

One module per file-descriptor type, as in rust-vmm's kvm-ioctls:
:mod:`.system` (``/dev/kvm``), :mod:`.vm`, :mod:`.vcpu`; :mod:`.uapi` holds every
struct layout, :mod:`.ioctls` every ioctl number, :mod:`._sys` the one ioctl
call site, :mod:`.kvm_run` the exit decoding, :mod:`.convert` the translation
to hvcore's neutral types.
"""

from hvcore_kvm.kick import install_kick_handler
from hvcore_kvm.system import BACKEND, KvmBackend, KvmHypervisor
from hvcore_kvm.vcpu import KvmVCPU
from hvcore_kvm.vm import KvmVM

__all__ = ["BACKEND", "KvmBackend", "KvmHypervisor", "KvmVCPU", "KvmVM", "install_kick_handler"]
