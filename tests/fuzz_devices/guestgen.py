"""Random hostile 64-bit guests for the device fuzzer: a hypothesis strategy over device traffic.

``program()`` draws up to ``MAX_OPS`` operations, each a few instructions, then ends the guest
through isa-debug-exit (``out 0xf4, al`` with ``al = END_VALUE``: the run's result is
``debug-exit`` with status ``END_STATUS``). The operations:

- ``in`` / ``out`` of 1, 2 or 4 bytes, by ``dx`` or an imm8 port, mostly to the ports of the
  machine's devices (``DEVICE_PORTS``), at their edges, or anywhere;
- string IO: ``ins`` / ``outs`` of each size, with or without ``rep``, an address-size prefix, DF
  set or clear, and random ``rcx`` / ``rdi`` / ``rsi``: into RAM, ROM, device MMIO, unbacked
  memory, across the end of RAM;
- MMIO reads and writes of 1, 2, 4 and 8 bytes (and odd lengths, at page ends) to the HPET,
  IOAPIC and LAPIC, the ROM and unbacked memory; ``rep movs`` between MMIO and RAM;
- fw_cfg DMA: a descriptor built in guest memory (or anywhere) and started through ports
  0x514 / 0x518, with any control bits, length and target; selector writes to 0x510;
- virtio-mmio (virtio-rng at ``VIRTIO``): the driver's bring-up with any features, queue size and
  ring addresses, hostile descriptors and available entries written to RAM, then a notify;
  register accesses at random offsets; the ACPI PM1 registers at 0x600 and the PM timer; the APM
  ports; the GPE0 block and the CPU hotplug registers;
- PCI: configuration reads and writes through mechanism #1 (0xCF8/0xCFC, PIIX's reset control at
  0xCF9 excepted) and ECAM at ``ECAM``, to the chipset and the virtio-pci function in slot 2: BARs
  moved anywhere (over RAM, over other devices), decoding and MSI-X turned on and off; MMIO to
  where its BARs were put (``PCI_MEMORY``);
- now and then: a few random bytes run as code, ``sti``.

Every address the guest touches is identity mapped (``layout`` in ``machine``: the first GiB and
the 4th), so most accesses reach memory or an exit; an address outside both faults, and with
no IDT that is a triple fault: the run ends ``shutdown``, a result like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

MAX_OPS = 24
END_VALUE = 0x42
"""What the guest's last instruction writes to isa-debug-exit."""
END_STATUS = END_VALUE << 1 | 1
"""The run's status when the guest got to its end."""

CODE = 0x1000
"""Where the raw image is loaded and entered (``load_raw``'s default)."""
RAM_SIZE = 4 << 20
SCRATCH = 0x100000
"""1 MiB of RAM the guest's DMA descriptors and string IO mostly use."""
ROM = 0x800000
ROM_SIZE = 0x10000
"""A read-only slot above RAM: writes to it are MMIO exits."""
HPET, IOAPIC, LAPIC = 0xFED00000, 0xFEC00000, 0xFEE00000
VIRTIO = 0xD0000000
"""The virtio-mmio transport ``add_virtio_mmio`` puts first (virtio-rng behind it)."""
ECAM, PCI_MEMORY = 0xE0000000, 0xC0000000
"""PCI bus 0's ECAM window, and where the host assigns memory BARs (virtio-pci's BAR 1, then 4)."""
IDENTITY_END = 1 << 30
"""The first GiB is identity mapped (RAM below ``RAM_SIZE``, the rest unbacked) ..."""
HOLE, FOUR_GIB = 0xC0000000, 1 << 32
"""... and the 4th GiB, where the device MMIO is."""

DEVICE_PORTS = (
    *range(0x3F8, 0x400),  # COM1
    0x70, 0x71,  # CMOS
    0x60, 0x64,  # i8042
    0x40, 0x41, 0x42, 0x43, 0x61,  # PIT, speaker (in-kernel PIT)
    0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1,  # PICs, ELCR
    0x402, 0xE9, 0x80,  # debug console (0xe9: not here), POST
    0x510, 0x511, *range(0x514, 0x51C),  # fw_cfg, its DMA register
    *range(0xE0, 0xEC),  # pc-testdev scratch / flush
    *range(0x2000, 0x2018),  # pc-testdev interrupt lines
    *range(0x600, 0x606), *range(0x608, 0x60C),  # ACPI PM1 event / control, PM timer
    0xB2, 0xB3,  # APM control (an SMI once PIIX4's APMC_EN is set) and status
    *range(0xAFE0, 0xAFE4), *range(0xCD8, 0xCE4),  # GPE0, CPU hotplug registers
    0xCF8, 0xCFA, 0xCFB, 0xCFC, 0xCFD, 0xCFE, 0xCFF,  # PCI mechanism #1 (0xCF9: reset, which ends the run)
)  # fmt: skip
"""Ports the fuzzer favours: every device's, and a few neighbours."""
EDGE_PORTS = (0x3F7, 0x3FE, 0x3FF, 0x50F, 0x513, 0x51A, 0x51B, 0x6F, 0x72, 0xDF, 0xEB, 0x1FFF, 0x2017, 0xFFFF, 0xF3)
"""Where a 2- or 4-byte access straddles a device's first or last port, or the end of the port space."""

_MASK64 = (1 << 64) - 1
_INTERESTING = (0, 1, 0x7F, 0x80, 0xFE, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
                0xFFFFFFFF, 1 << 32, 2**63, _MASK64)  # fmt: skip


@dataclass(frozen=True)
class Op:
    """One operation: its bytes and an Intel-syntax listing (one line per instruction)."""

    code: bytes
    text: str


@dataclass(frozen=True, repr=False)
class Program:
    """A generated guest: its operations, then the debug-exit epilogue."""

    ops: tuple[Op, ...]

    @property
    def code(self) -> bytes:
        """The raw image, to load at ``CODE`` in long mode."""
        return b"".join(op.code for op in self.ops) + EPILOGUE.code

    def listing(self) -> str:
        """Every operation's instructions, for a failure report."""
        return "\n".join(f"  {i:2}: {op.text}" for i, op in enumerate((*self.ops, EPILOGUE)))

    def __repr__(self) -> str:
        return f"<Program {len(self.ops)} ops>\n{self.listing()}"


EPILOGUE = Op(bytes([0xB0, END_VALUE, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD]),
              f"mov al, {END_VALUE:#x}; out 0xf4, al; hlt; jmp $-1")  # fmt: skip


# -- encodings ------------------------------------------------------------------------------------

_REGS = {"rax": 0, "rcx": 1, "rdx": 2, "rbx": 3, "rsi": 6, "rdi": 7}


def mov_imm(reg: str, value: int) -> Op:
    """``mov reg, imm``: the short zero-extending ``mov r32, imm32`` when it fits, else ``movabs``."""
    r = _REGS[reg]
    value &= _MASK64
    if value < 1 << 32:
        return Op(bytes([0xB8 + r]) + value.to_bytes(4, "little"), f"mov e{reg[1:]}, {value:#x}")
    return Op(bytes([0x48, 0xB8 + r]) + value.to_bytes(8, "little"), f"movabs {reg}, {value:#x}")


def join(*ops: Op) -> Op:
    """Several operations as one."""
    return Op(b"".join(op.code for op in ops), "; ".join(op.text for op in ops))


_ACC = {1: "al", 2: "ax", 4: "eax", 8: "rax"}
_PTR = {1: "byte", 2: "word", 4: "dword", 8: "qword"}
_STR = {1: "b", 2: "w", 4: "d", 8: "q"}


def port_io(port: int, size: int, is_in: bool, imm8: bool) -> Op:
    """``in acc, dx`` / ``out dx, acc`` (or the imm8-port forms) of ``size`` bytes."""
    prefix = b"\x66" if size == 2 else b""
    wide = size != 1
    if imm8:
        opcode = (0xE4 if is_in else 0xE6) + wide
        text = f"in {_ACC[size]}, {port:#x}" if is_in else f"out {port:#x}, {_ACC[size]}"
        return Op(prefix + bytes([opcode, port]), text)
    opcode = (0xEC if is_in else 0xEE) + wide
    text = f"in {_ACC[size]}, dx" if is_in else f"out dx, {_ACC[size]}"
    return join(mov_imm("rdx", port), Op(prefix + bytes([opcode]), text))


def string_io(size: int, is_in: bool, rep: bool, addr32: bool) -> Op:
    """``[rep] ins`` / ``outs`` of ``size`` bytes; ``addr32``: with the 0x67 prefix (ecx, edi / esi)."""
    code = (b"\x66" if size == 2 else b"") + (b"\x67" if addr32 else b"") + (b"\xf3" if rep else b"")
    code += bytes([(0x6C if is_in else 0x6E) + (size != 1)])
    name = ("ins" if is_in else "outs") + _STR[size]
    return Op(code, ("rep " if rep else "") + name + (" (addr32)" if addr32 else ""))


def mmio(size: int, is_write: bool) -> Op:
    """``mov [rbx], acc`` or ``mov acc, [rbx]`` of ``size`` bytes."""
    prefix = {1: b"", 2: b"\x66", 4: b"", 8: b"\x48"}[size]
    opcode = (0x88 if is_write else 0x8A) + (size != 1)
    text = f"mov {_PTR[size]} ptr [rbx], {_ACC[size]}" if is_write else f"mov {_ACC[size]}, {_PTR[size]} ptr [rbx]"
    return Op(prefix + bytes([opcode, 0x03]), text)


def movs(size: int, rep: bool) -> Op:
    """``[rep] movs`` of ``size`` bytes (rsi to rdi)."""
    prefix = {1: b"", 2: b"\x66", 4: b"", 8: b"\x48"}[size]
    code = (b"\xf3" if rep else b"") + prefix + bytes([0xA4 + (size != 1)])
    return Op(code, ("rep " if rep else "") + "movs" + _STR[size])


STD, CLD, STI = Op(b"\xfd", "std"), Op(b"\xfc", "cld"), Op(b"\xfb", "sti")


# -- strategies -----------------------------------------------------------------------------------


def values(bits: int = 64) -> st.SearchStrategy[int]:
    """Values of ``bits`` bits, often a boundary."""
    mask = (1 << bits) - 1
    return st.one_of(st.sampled_from(sorted({v & mask for v in _INTERESTING})), st.integers(0, mask))


def ports() -> st.SearchStrategy[int]:
    """Mostly the devices' ports, sometimes an edge or any port; isa-debug-exit (ends the run) rarely."""
    return st.one_of(
        st.sampled_from(DEVICE_PORTS),
        st.sampled_from(DEVICE_PORTS),
        st.sampled_from(DEVICE_PORTS),
        st.sampled_from(EDGE_PORTS),
        st.integers(0, 0xFFFF).filter(lambda p: p != 0xF4),
    )


@st.composite
def addresses(draw: st.DrawFn) -> int:
    """Somewhere to read or write: device MMIO, RAM, ROM, unbacked, the edges of each; rarely unmapped."""
    kind = draw(
        st.sampled_from(
            ("hpet", "ioapic", "lapic", "virtio", "ecam", "pci", "scratch", "ram", "rom", "unbacked", "edge", "wild")
        )
    )
    if kind == "ecam":
        return ECAM + draw(st.integers(0, 3)) * 0x8000 + draw(st.one_of(_PCI_REGISTERS, st.integers(0, 0xFFF)))
    if kind == "pci":
        return PCI_MEMORY + draw(st.one_of(st.sampled_from((0, 0x800, 0x4000, 0x5000, 0x6000, 0x7000)),
                                           st.integers(0, 0x7FFF)))  # fmt: skip
    if kind == "virtio":
        return VIRTIO + draw(
            st.one_of(st.sampled_from((0, 0x34, 0x44, 0x50, 0x60, 0x70, 0x80, 0x100)), st.integers(0, 0x1FF))
        )
    if kind == "hpet":
        return HPET + draw(st.one_of(st.sampled_from((0, 8, 0x10, 0xF0, 0x100, 0x108, 0x110, 0x120, 0x3F8, 0x3FC)),
                                     st.integers(0, 0xFFF)))  # fmt: skip
    if kind == "ioapic":
        return IOAPIC + draw(st.one_of(st.sampled_from((0, 0x10, 0x20, 0x40)), st.integers(0, 0xFFF)))
    if kind == "lapic":
        return LAPIC + draw(st.one_of(st.sampled_from((0x20, 0x80, 0xB0, 0xF0, 0x300, 0x310, 0x320, 0x350, 0x380)),
                                      st.integers(0, 0xFFF)))  # fmt: skip
    if kind == "scratch":
        return SCRATCH + draw(st.integers(0, 0xFFFFF))
    if kind == "ram":
        return draw(st.integers(0, RAM_SIZE - 1))
    if kind == "rom":
        return ROM + draw(st.integers(0, ROM_SIZE - 1))
    if kind == "unbacked":
        return draw(st.one_of(st.integers(RAM_SIZE, IDENTITY_END - 1), st.integers(HOLE, FOUR_GIB - 1)))
    if kind == "edge":  # the last bytes before, or the first after, the end of RAM, ROM, a page
        edge = draw(st.sampled_from((RAM_SIZE, ROM, ROM + ROM_SIZE, HPET + 0x400, HPET + 0x1000, IDENTITY_END,
                                     HOLE, SCRATCH + 0x1000, FOUR_GIB)))  # fmt: skip
        return edge + draw(st.integers(-9, 8))
    return draw(values())


@st.composite
def port_op(draw: st.DrawFn) -> Op:
    """An IN or OUT of 1, 2 or 4 bytes; an OUT's value random."""
    port, size, is_in = draw(ports()), draw(st.sampled_from((1, 2, 4))), draw(st.booleans())
    imm8 = port < 0x100 and draw(st.booleans())
    io = port_io(port, size, is_in, imm8)
    return io if is_in else join(mov_imm("rax", draw(values(32))), io)


@st.composite
def counts(draw: st.DrawFn) -> int:
    """A repeat count: mostly small, sometimes huge (the run's timeout or a fault ends those)."""
    return draw(st.one_of(st.integers(0, 4), st.integers(0, 64), st.sampled_from((0x1000, 0x10001)), values()))


@st.composite
def string_io_op(draw: st.DrawFn) -> Op:
    """``ins`` / ``outs`` with random count, pointer, direction and address size."""
    is_in, size, rep = draw(st.booleans()), draw(st.sampled_from((1, 2, 4))), draw(st.integers(0, 3)) > 0
    setup = [
        mov_imm("rdx", draw(ports())),
        mov_imm("rcx", draw(counts())),
        mov_imm("rdi" if is_in else "rsi", draw(addresses())),
        STD if draw(st.integers(0, 3)) == 0 else CLD,
    ]
    return join(*setup, string_io(size, is_in, rep, draw(st.integers(0, 5)) == 0))


@st.composite
def mmio_op(draw: st.DrawFn) -> Op:
    """A 1/2/4/8-byte load or store at a random address (odd lengths come from page-crossing ones)."""
    size, is_write = draw(st.sampled_from((1, 2, 4, 8))), draw(st.booleans())
    setup = [mov_imm("rbx", draw(addresses()))]
    if is_write:
        setup.append(mov_imm("rax", draw(values(8 * size))))
    return join(*setup, mmio(size, is_write))


@st.composite
def movs_op(draw: st.DrawFn) -> Op:
    """``rep movs`` between two random places (MMIO to RAM, RAM to MMIO, MMIO to MMIO...)."""
    size, rep = draw(st.sampled_from((1, 2, 4, 8))), draw(st.booleans())
    count = draw(st.one_of(st.integers(0, 8), counts()))
    return join(mov_imm("rsi", draw(addresses())), mov_imm("rdi", draw(addresses())), mov_imm("rcx", count),
                STD if draw(st.integers(0, 3)) == 0 else CLD, movs(size, rep))  # fmt: skip


_DMA_CONTROL = st.one_of(
    st.sampled_from((0x02, 0x04, 0x08, 0x0A, 0x10, 0x01, 0)),
    st.integers(0, 0xFFFF).map(lambda sel: sel << 16 | 0x0A),  # select and read
    st.integers(0, 0xFFFFFFFF),
)
_DMA_SELECTORS = (0x00, 0x01, 0x03, 0x05, 0x0E, 0x0F, 0x19, 0x20, 0x21, 0x4000, 0x8000, 0xFFFF)


@st.composite
def dma_op(draw: st.DrawFn) -> Op:
    """fw_cfg DMA: write a ``FWCfgDmaAccess`` (big-endian) at a random place, start it by its address."""
    where = draw(st.one_of(st.integers(0, 0xFFF).map(lambda o: SCRATCH + 8 * o), addresses()))
    control = draw(st.one_of(_DMA_CONTROL, st.sampled_from(_DMA_SELECTORS).map(lambda s: s << 16 | 0x0A)))
    length = draw(st.one_of(st.integers(0, 64), st.sampled_from((0x1000, 0x100000, RAM_SIZE)), values(32)))
    target = draw(st.one_of(st.integers(0, 0xFFF).map(lambda o: SCRATCH + 0x8000 + 8 * o), addresses()))
    head = (control << 32 | length).to_bytes(8, "big")
    ops = [
        mov_imm("rbx", where),
        mov_imm("rax", int.from_bytes(head, "little")),
        Op(b"\x48\x89\x03", "mov [rbx], rax"),
        mov_imm("rax", int.from_bytes(target.to_bytes(8, "big"), "little")),
        Op(b"\x48\x89\x43\x08", "mov [rbx+8], rax"),
    ]
    start = draw(st.one_of(st.just(where), addresses()))  # sometimes a descriptor elsewhere
    high, low = (start >> 32) & 0xFFFFFFFF, start & 0xFFFFFFFF
    if high or draw(st.booleans()):
        ops += [mov_imm("rax", int.from_bytes(high.to_bytes(4, "big"), "little")), port_io(0x514, 4, False, False)]
    ops += [mov_imm("rax", int.from_bytes(low.to_bytes(4, "big"), "little")), port_io(0x518, 4, False, False)]
    return join(*ops)


def store32(address: int, value: int) -> Op:
    """``mov dword [address], value`` (through rbx and eax)."""
    return join(mov_imm("rbx", address), mov_imm("rax", value & 0xFFFFFFFF), Op(b"\x89\x03", "mov [rbx], eax"))


@st.composite
def virtio_op(draw: st.DrawFn) -> Op:
    """virtio-mmio: the driver's bring-up with drawn features, size and rings, hostile ring contents, a notify."""
    wild = draw(st.integers(0, 7)) == 0  # mostly a bring-up that works, so the hostile rings get read
    pages = st.integers(0, 0xFF).map(lambda page: SCRATCH + 0x1000 * page)
    table, available, used = (draw(addresses() if wild else pages) for _ in range(3))
    registers = [
        (0x70, 0),
        (0x70, 1),
        (0x70, 3),
        (0x24, 1),
        (0x20, draw(values(32)) if wild else 1),  # VERSION_1
        (0x24, 0),
        (0x20, draw(values(32)) if wild else draw(st.sampled_from((0, 1 << 28, 1 << 29, 3 << 28)))),
        (0x70, 0xB),
        (0x30, draw(values(32)) if wild else 0),
        (0x38, draw(values(32)) if wild else draw(st.sampled_from((1, 2, 8, 64)))),
        (0x80, table),
        (0x90, available),
        (0xA0, used),
        (0x44, 1),
        (0x70, 0xF),
    ]
    ops = [store32(VIRTIO + offset, value) for offset, value in registers]
    for index in range(draw(st.integers(0, 3))):  # descriptors: addr, len, flags | next << 16
        at = table + 16 * draw(st.integers(0, 3)) if index else table
        ops += [
            store32(at, draw(st.one_of(st.integers(0, 0xFFFF).map(lambda o: SCRATCH + 0x10 * o), values(32)))),
            store32(at + 4, 0),
            store32(at + 8, draw(st.one_of(st.integers(0, 64), values(32)))),
            store32(at + 12, draw(st.integers(0, 7)) | draw(st.integers(0, 9)) << 16),
        ]
    heads = draw(st.integers(0, 0xFFFF)) << 16 | draw(st.integers(0, 9))
    ops += [store32(available + 4, heads), store32(available, draw(st.integers(1, 3)) << 16 | draw(st.integers(0, 1)))]
    return join(*ops, store32(VIRTIO + 0x50, draw(values(32)) if wild else 0))


_PCI_REGISTERS = st.sampled_from(
    (0, 4, 6, 0x10, 0x14, 0x18, 0x20, 0x24, 0x34, 0x3C, 0x40, 0x42, 0x58, 0x5B, 0x60, 0x63, 0x72, 0x80)
)  # the header, and the chipset's: PIIX4 PM's PMBA / DEVACTB / PMREGMISC, PIRQ routes, the SMRAM register


@st.composite
def pci_op(draw: st.DrawFn) -> Op:
    """A configuration access through mechanism #1: the address (mostly bus 0, slots 0-3, function 0 or
    PIIX4 PM's 3), then the data."""
    enable = draw(st.integers(0, 7)) != 0
    bus = 0 if draw(st.booleans()) else draw(st.integers(0, 255))
    register = draw(st.one_of(_PCI_REGISTERS, st.integers(0, 0xFF)))
    address = (
        enable << 31
        | bus << 16
        | draw(st.integers(0, 3)) << 11
        | draw(st.integers(0, 7) if bus else st.sampled_from((0, 0, 0, 3, 5))) << 8  # 1.3: PIIX4 PM
        | register
    )
    size = draw(st.sampled_from((1, 2, 4)))
    port = 0xCFC + draw(st.integers(0, 4 - size))
    data = (
        port_io(port, size, True, False)
        if draw(st.booleans())
        else join(mov_imm("rax", draw(values(32))), port_io(port, size, False, False))
    )
    return join(mov_imm("rax", address), port_io(0xCF8, 4, False, False), data)


@st.composite
def select_op(draw: st.DrawFn) -> Op:
    """A fw_cfg selector write, then a few byte reads of the item."""
    selector = draw(st.one_of(st.sampled_from(_DMA_SELECTORS), st.integers(0, 0xFFFF)))
    reads = [port_io(0x511, 1, True, False)] * draw(st.integers(0, 3))
    return join(mov_imm("rax", selector), port_io(0x510, 2, False, False), *reads)


@st.composite
def raw_op(draw: st.DrawFn) -> Op:
    """A few random bytes run as code (most fault: the run ends ``shutdown``)."""
    data = draw(st.binary(min_size=1, max_size=6))
    return Op(data, f"db {data.hex(' ')}")


_WEIGHTED = (
    (16, port_op()),
    (12, string_io_op()),
    (12, mmio_op()),
    (8, dma_op()),
    (4, virtio_op()),
    (6, pci_op()),
    (4, select_op()),
    (4, movs_op()),
    (1, st.just(STI)),
    (1, raw_op()),
)


def operations() -> st.SearchStrategy[Op]:
    """One operation, weighted toward device traffic (random code and ``sti`` are rare: they end runs early)."""
    return st.sampled_from([s for weight, s in _WEIGHTED for _ in range(weight)]).flatmap(lambda s: s)


@st.composite
def program(draw: st.DrawFn) -> Program:
    """A random guest: up to ``MAX_OPS`` operations, then the debug-exit epilogue."""
    return Program(tuple(draw(st.lists(operations(), min_size=1, max_size=MAX_OPS))))
