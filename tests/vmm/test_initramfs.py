"""The initramfs (cpio newc) writer: read back field by field, as the kernel's unpacker reads it."""

from __future__ import annotations

import stat

import pytest

from hvcore import ImageError
from hvcore.vmm.initramfs import Initramfs


def read_newc(archive: bytes) -> list[dict[str, object]]:
    """The entries of a newc archive (a reader written from the format's description)."""
    entries: list[dict[str, object]] = []
    at = 0
    fields = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
              "rdevmajor", "rdevminor", "namesize", "check")  # fmt: skip
    while True:
        assert archive[at : at + 6] == b"070701", f"bad magic at {at}"
        values = {f: int(archive[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i, f in enumerate(fields)}
        name_at = at + 110
        name = archive[name_at : name_at + values["namesize"] - 1].decode()
        assert archive[name_at + values["namesize"] - 1] == 0
        data_at = (name_at + values["namesize"] + 3) & ~3
        data = archive[data_at : data_at + values["filesize"]]
        at = (data_at + values["filesize"] + 3) & ~3
        if name == "TRAILER!!!":
            assert at == len(archive)
            return entries
        entries.append({"name": name, "data": data, **values})


def test_entries_read_back_with_parents_first() -> None:
    archive = (
        Initramfs()
        .file("/bin/busybox", b"\x7fELF...", 0o755)
        .symlink("/bin/sh", "busybox")
        .char_device("/dev/console", 5, 1)
        .file("init", b"#!/bin/sh\n", 0o755)
        .to_bytes()
    )
    entries = read_newc(archive)
    assert [e["name"] for e in entries] == ["bin", "bin/busybox", "bin/sh", "dev", "dev/console", "init"]
    by_name = {str(e["name"]): e for e in entries}
    assert by_name["bin"]["mode"] == stat.S_IFDIR | 0o755
    assert (by_name["bin/busybox"]["mode"], by_name["bin/busybox"]["data"]) == (stat.S_IFREG | 0o755, b"\x7fELF...")
    assert (by_name["bin/sh"]["mode"], by_name["bin/sh"]["data"]) == (stat.S_IFLNK | 0o777, b"busybox")
    console = by_name["dev/console"]
    assert (console["mode"], console["rdevmajor"], console["rdevminor"]) == (stat.S_IFCHR | 0o600, 5, 1)
    assert len({e["ino"] for e in entries}) == len(entries)  # distinct inode numbers: no false hard links
    assert "/init" in Initramfs().file("/init", b"")


@pytest.mark.parametrize("path", ["", "/", "/a/../b", "../x"])
def test_paths_outside_the_archive_are_refused(path: str) -> None:
    with pytest.raises(ImageError, match="not a path inside the archive"):
        Initramfs().file(path, b"")


def test_a_path_is_added_once() -> None:
    archive = Initramfs().file("/init", b"1")
    with pytest.raises(ImageError, match="already in the archive"):
        archive.file("/init", b"2")
