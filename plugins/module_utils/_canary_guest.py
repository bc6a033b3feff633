# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The canary's guest: a 512-byte x86 boot sector and a 64 KiB firmware image, assembled here.

The guest writes one page in every eight (GUEST_STRIDE). Every page it writes is dirty and
non-zero, so it must really travel; the seven between stay zero and cross as zero pages. Writing
every page made the canary twice as long (the guest's first pass, and placing 65,536 pages
with UFFDIO_COPY) and changed nothing the canary proves: page requests stay in the hundreds
or thousands either way (measured 969-1,972 TCG, 462-1,015 KVM at 256 MiB).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import struct

__all__ = [
    "GUEST_COUNTER_ADDR",
    "GUEST_MAGIC",
    "GUEST_MAGIC_ADDR",
    "GUEST_STRIDE",
    "boot_sector",
    "firmware",
    "parse_xp",
    "xp_command",
]

# Guest memory layout: the boot sector keeps a pass counter and a magic word in free low
# memory, so QMP can tell that the guest runs, and that it still runs after the migration.
GUEST_COUNTER_ADDR = 0x500
GUEST_MAGIC_ADDR = 0x504
GUEST_MAGIC = 0x59524E43  # "CNRY" in little-endian memory
_BOOT_ADDR = 0x7C00
_WRITE_FROM = 0x100000  # the first megabyte holds the BIOS hole; start above it
# Below 2 GiB all RAM is contiguous on every PC machine type (q35 puts its PCI hole there).
_WRITE_LIMIT_MB = 2048
# One page in eight: the pages between stay zero (see the module docstring).
GUEST_STRIDE = 8 * 4096
_ROM_SIZE = 0x10000  # QEMU takes -bios images in multiples of 64 KiB
_ROM_SEGMENT = 0xF000  # where the last 64 KiB of the BIOS image appear below 1 MiB
_ROM_SECTOR_OFFSET = 0x100
_RESET_VECTOR_OFFSET = 0xFFF0  # the CPU starts at F000:FFF0, the image's last 16 bytes
_CODE_SELECTOR = 0x08
_DATA_SELECTOR = 0x10


class _MachineCode:
    """Bytes of x86 machine code with labels; addresses are patched in by assemble()."""

    _SIZES = {"abs16": 2, "abs32": 4, "rel8": 1}

    def __init__(self, origin):
        self.origin = origin
        self.code = bytearray()
        self.labels = {}
        self.fixups = []

    def emit(self, *parts):
        for part in parts:
            self.code += bytes([part]) if isinstance(part, int) else part

    def label(self, name):
        self.labels[name] = self.origin + len(self.code)

    def ref(self, name, kind):
        self.fixups.append((len(self.code), name, kind))
        self.code += bytes(self._SIZES[kind])

    def align(self, boundary, fill=0x90):
        while len(self.code) % boundary:
            self.code.append(fill)

    def assemble(self):
        for offset, name, kind in self.fixups:
            target = self.labels[name]
            if kind == "abs16":
                self.code[offset:offset + 2] = struct.pack("<H", target)
            elif kind == "abs32":
                self.code[offset:offset + 4] = struct.pack("<I", target)
            else:
                self.code[offset:offset + 1] = struct.pack("<b", target - (self.origin + offset + 1))
        return bytes(self.code)


def _u16(value):
    return struct.pack("<H", value)


def _u32(value):
    return struct.pack("<I", value)


def _enter_protected_mode(asm):
    """16-bit code at 0000:7C00, where the BIOS leaves a boot sector, up to a 32-bit far jump."""
    asm.emit(0xFA)  # cli: no BIOS interrupt may run once the loop overwrites the IVT
    asm.emit(0x31, 0xC0)  # xor ax, ax
    asm.emit(0x8E, 0xD8)  # mov ds, ax: lgdt reads its operand through DS
    # Fast A20 through port 0x92 so odd megabytes are not aliases of even ones; bit 0 of
    # that port resets the machine, so it is cleared.
    asm.emit(0xE4, 0x92)  # in al, 0x92
    asm.emit(0x0C, 0x02)  # or al, 2
    asm.emit(0x24, 0xFE)  # and al, 0xFE
    asm.emit(0xE6, 0x92)  # out 0x92, al
    asm.emit(0x0F, 0x01, 0x16)  # lgdt [gdt_descriptor]
    asm.ref("gdt_descriptor", "abs16")
    asm.emit(0x0F, 0x20, 0xC0)  # mov eax, cr0
    asm.emit(0x0C, 0x01)  # or al, 1: protection enable
    asm.emit(0x0F, 0x22, 0xC0)  # mov cr0, eax
    # The far jump loads CS with the flat 32-bit code segment; from here on code is 32-bit.
    asm.emit(0xEA)  # jmp 0x08:protected
    asm.ref("protected", "abs16")
    asm.emit(_u16(_CODE_SELECTOR))


def _write_pages_forever(asm, top):
    """32-bit loop: bump the pass counter, then write it into the first dword of every GUEST_STRIDE bytes."""
    asm.label("protected")
    asm.emit(0x66, 0xB8, _u16(_DATA_SELECTOR))  # mov ax, 0x10: flat 4 GiB data segment
    asm.emit(0x8E, 0xD8)  # mov ds, ax
    asm.emit(0x8E, 0xC0)  # mov es, ax
    asm.emit(0x8E, 0xD0)  # mov ss, ax
    asm.emit(0xC7, 0x05, _u32(GUEST_MAGIC_ADDR), _u32(GUEST_MAGIC))  # mov dword [magic], "CNRY"
    asm.emit(0x31, 0xD2)  # xor edx, edx: the pass counter
    asm.label("pass")
    asm.emit(0x42)  # inc edx
    asm.emit(0x89, 0x15, _u32(GUEST_COUNTER_ADDR))  # mov [counter], edx
    asm.emit(0xBF, _u32(_WRITE_FROM))  # mov edi, 1 MiB
    asm.label("page")
    # Writing, not reading: a written page is dirty on the source and non-zero, so it must
    # really travel, and on the destination a write to a missing page is a userfault.
    asm.emit(0x89, 0x17)  # mov [edi], edx
    asm.emit(0x81, 0xC7, _u32(GUEST_STRIDE))  # add edi, 32 KiB
    asm.emit(0x81, 0xFF, _u32(top))  # cmp edi, top
    asm.emit(0x72)  # jb page
    asm.ref("page", "rel8")
    asm.emit(0xEB)  # jmp pass
    asm.ref("pass", "rel8")


def _flat_gdt(asm):
    asm.align(8)
    asm.label("gdt")
    asm.emit(bytes(8))  # the null descriptor
    # base 0, limit 0xFFFFF in 4 KiB units (4 GiB), present ring 0; G=1 D=1 (32-bit).
    asm.emit(0xFF, 0xFF, 0x00, 0x00, 0x00, 0x9A, 0xCF, 0x00)  # 0x08: code, execute/read
    asm.emit(0xFF, 0xFF, 0x00, 0x00, 0x00, 0x92, 0xCF, 0x00)  # 0x10: data, read/write
    asm.label("gdt_descriptor")
    asm.emit(_u16(3 * 8 - 1))  # limit: three descriptors
    asm.ref("gdt", "abs32")


def boot_sector(memory_mb):
    """The canary guest: 512 bytes the BIOS boots, that write across its RAM forever.

    It switches to 32-bit protected mode with a flat GDT and loops over [1 MiB, top), top
    being the guest's RAM capped at 2 GiB, writing the pass number into the first page of every
    GUEST_STRIDE bytes; the pass
    number is also kept at GUEST_COUNTER_ADDR and "CNRY" at GUEST_MAGIC_ADDR.
    """
    top = min(int(memory_mb), _WRITE_LIMIT_MB) << 20
    asm = _MachineCode(_BOOT_ADDR)
    _enter_protected_mode(asm)
    _write_pages_forever(asm, top)
    _flat_gdt(asm)
    code = asm.assemble()
    if len(code) > 510:
        raise ValueError("boot sector code is %d bytes, more than 510" % len(code))
    # 0x55 0xAA at offset 510 is what makes a BIOS boot the sector.
    return code + bytes(510 - len(code)) + b"\x55\xaa"


def _sector_loader(asm):
    """Real-mode code at F000:0000: copy the boot sector to 0000:7C00 and jump to it, as a BIOS would."""
    asm.emit(0xFA)  # cli
    # The CPU leaves reset with caching disabled (CR0.CD and NW); a BIOS turns it on, so do we.
    asm.emit(0x0F, 0x20, 0xC0)  # mov eax, cr0
    asm.emit(0x66, 0x25, _u32(0x9FFFFFFF))  # and eax, ~(CD | NW)
    asm.emit(0x0F, 0x22, 0xC0)  # mov cr0, eax
    asm.emit(0x31, 0xC0)  # xor ax, ax
    asm.emit(0x8E, 0xC0)  # mov es, ax: destination segment 0
    asm.emit(0xB8, _u16(_ROM_SEGMENT))  # mov ax, 0xF000
    asm.emit(0x8E, 0xD8)  # mov ds, ax: source segment, this ROM
    asm.emit(0xBE, _u16(_ROM_SECTOR_OFFSET))  # mov si, sector
    asm.emit(0xBF, _u16(_BOOT_ADDR))  # mov di, 0x7C00
    asm.emit(0xB9, _u16(512))  # mov cx, 512
    asm.emit(0xFC)  # cld
    asm.emit(0xF3, 0xA4)  # rep movsb
    asm.emit(0xEA, _u16(_BOOT_ADDR), _u16(0))  # jmp 0000:7C00


def firmware(memory_mb):
    """A 64 KiB -bios image that boots boot_sector(memory_mb) at once, without SeaBIOS.

    SeaBIOS takes seconds to boot under nested KVM and needs a disk to boot from; the guest
    needs neither BIOS services nor devices, so a reset vector and a 512-byte copy suffice.
    """
    rom = bytearray(b"\xff" * _ROM_SIZE)  # erased flash reads as 0xFF
    loader = _MachineCode(0)
    _sector_loader(loader)
    code = loader.assemble()
    rom[: len(code)] = code
    rom[_ROM_SECTOR_OFFSET : _ROM_SECTOR_OFFSET + 512] = boot_sector(memory_mb)
    reset = _MachineCode(0)
    reset.emit(0xEA, _u16(0), _u16(_ROM_SEGMENT))  # jmp F000:0000, into the loader
    rom[_RESET_VECTOR_OFFSET : _RESET_VECTOR_OFFSET + 5] = reset.assemble()
    return bytes(rom)


def xp_command():
    """The HMP command that shows the guest's pass counter and magic word."""
    return "xp /2wx 0x%x" % GUEST_COUNTER_ADDR


def parse_xp(text):
    """(counter, magic) from HMP "xp /2wx" output such as "0000000000000500: 0x00000007 0x59524e43"."""
    try:
        words = text.split(":", 1)[1].split()
        return int(words[0], 16), int(words[1], 16)
    except (IndexError, ValueError):
        return None, None
