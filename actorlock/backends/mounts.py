"""Mounts that break the lock model: NFS with locks local to one client.

An NFS mount with ``nolock`` (NFSv3) or ``local_lock=`` anything but
``none`` keeps the byte-range and flock locks the file backend relies on
inside one client: two hosts could then both be granted a disk. The mount
table (/proc/self/mountinfo) tells, before a host joins.
"""

from __future__ import annotations

import os
import re

__all__ = ["MOUNTINFO", "local_lock_option"]

MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(r"\\([0-7]{3})")
# The cap is generous: a host with thousands of mounts has a mountinfo of a few MB.
_MAX_MOUNTINFO = 64 << 20


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _contains(mount_point: str, path: str) -> bool:
    return mount_point == "/" or path == mount_point or path.startswith(mount_point + "/")


def local_lock_option(path: str, mountinfo: str = MOUNTINFO) -> tuple[str, str] | None:
    """``(mount point, option)`` when ``path`` is on an NFS mount whose locks stay local, else None.

    A missing or unreadable mount table (not Linux) tells nothing: None.
    """
    try:
        with open(mountinfo, "rb") as f:
            text = f.read(_MAX_MOUNTINFO).decode("utf-8", "surrogateescape")
    except OSError:
        return None
    real = os.path.realpath(path)
    best: tuple[str, str, list[str]] | None = None
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if len(fields) < sep + 2:
            continue
        mount_point = _unescape(fields[4])
        if not _contains(mount_point, real):
            continue
        # The longest mount point holds the path; of equal ones the last
        # listed is mounted over the others.
        if best is None or len(mount_point) >= len(best[0]):
            options = fields[5].split(",") + (fields[sep + 3].split(",") if len(fields) > sep + 3 else [])
            best = (mount_point, fields[sep + 1], options)
    if best is None:
        return None
    mount_point, fstype, options = best
    if not fstype.startswith("nfs"):
        return None
    for option in options:
        if option == "nolock" or (option.startswith("local_lock=") and option != "local_lock=none"):
            return mount_point, option
    return None
