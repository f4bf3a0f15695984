"""Who may open a file lockspace: owner only, or one configured group.

A lock file anyone can open lets anyone block renewals: an unprivileged
user took a read lock on a host's liveness lock file and the host powered
its guest off a second later. New files are therefore 0600 in 0700
directories (0660 and 0770 with ``[file] group``, for coordinators running
as different users of one group). A lockspace whose files or directories
other users can *write* cannot be trusted at all and is refused, naming the
file; files others can only *read* (a lockspace from an older version) are
made private when this user owns them.
"""

from __future__ import annotations

import grp
import os
import stat

import attrs

from ..errors import ConfigError, LockspaceError

__all__ = ["Modes", "check_lockspace", "resolve_group"]


@attrs.frozen
class Modes:
    """Permissions of everything the backend creates; ``gid`` None: owner only."""

    gid: int | None = None

    @property
    def file_mode(self) -> int:
        return 0o600 if self.gid is None else 0o660

    @property
    def dir_mode(self) -> int:
        return 0o700 if self.gid is None else 0o770

    def new_file(self, fd: int) -> None:
        """Give a file this process just created its group and mode."""
        if self.gid is not None:
            # The umask may have taken the group bits open() was given.
            os.fchown(fd, -1, self.gid)
            os.fchmod(fd, self.file_mode)

    def new_dir(self, path: str) -> None:
        if self.gid is not None:
            os.chown(path, -1, self.gid)
        os.chmod(path, self.dir_mode)

    def foreign_bits(self, st: os.stat_result) -> int:
        """Permission bits of ``st`` that reach users outside the owner (and the group)."""
        shared_group = self.gid is not None and st.st_gid == self.gid
        return stat.S_IMODE(st.st_mode) & (0o007 if shared_group else 0o077)

    def others_can_write(self, st: os.stat_result) -> bool:
        return bool(self.foreign_bits(st) & (stat.S_IWOTH | stat.S_IWGRP))


def resolve_group(name: str) -> int | None:
    """The gid of ``[file] group`` (empty: None). Runs in a worker thread: NSS may block."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError("file.group", f"no such group {name!r}") from None


def _refuse(path: str, st: os.stat_result) -> LockspaceError:
    return LockspaceError(
        path,
        f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}): its records cannot be "
        "trusted; make it owner-only (or set [file] group to the group that shares it)",
    )


def check_lockspace(root: str, subdirs: tuple[str, ...], meta: str, modes: Modes) -> None:
    """Refuse a lockspace others can write; make files others can only read private.

    Directories are checked before their entries: only a directory others
    cannot write guarantees nobody swaps an entry between our stat and chmod.
    """
    st = os.stat(root)
    # Even with the sticky bit: another user could create hosts/ or leases/ first.
    if modes.others_can_write(st):
        raise _refuse(root, st)
    me = os.geteuid()
    paths = [meta]
    for directory in subdirs:
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise LockspaceError(directory, "is a symbolic link: refused (never followed)")
        if modes.others_can_write(st):
            raise _refuse(directory, st)
        paths.append(directory)
        with os.scandir(directory) as entries:
            paths.extend(entry.path for entry in entries)
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            continue  # never opened: reading it is refused naming it
        if modes.others_can_write(st):
            raise _refuse(path, st)
        extra = modes.foreign_bits(st)
        if extra and st.st_uid == me:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~extra)
