"""File operations confined to one output folder: they never follow a symbolic link and never
leave the folder, whatever a crafted manifest, journal or a planted link says.

Every path is relative to the folder and checked (no absolute path, no ``..``, no empty part).
Its folders are walked one at a time with ``openat(O_NOFOLLOW | O_DIRECTORY)`` from a descriptor
of the output folder, and the last part is renamed, removed or inspected through that folder's
descriptor, so a link anywhere on the way (or where zfprobe would write or delete) is an error,
never followed; a link swapped in while zfprobe works is caught the same way.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
from contextlib import contextmanager

from zfprobe.errors import OutputError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class LinkInOutputError(OutputError):
    """A symbolic link (or other non-folder) where zfprobe would walk, write or delete."""


def check_relative(relative, reserved: str | None = None) -> str:
    """``relative`` as a normalized path inside a folder ('/'-separated); ValueError when it is
    absolute, empty, has '.', '..' or empty parts, a NUL, or starts with ``reserved``."""
    if not isinstance(relative, str) or not relative or "\0" in relative or os.path.isabs(relative):
        raise ValueError(f"file name {relative!r} is not a relative path")
    parts = relative.replace("\\", "/").split("/")
    if any(p in ("", ".", "..") for p in parts) or (reserved and parts[0].startswith(reserved)):
        raise ValueError(f"file name {relative!r} is not allowed")
    return "/".join(parts)


class Folder:
    """An open folder; every method takes a path relative to it (see the module doc)."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise OutputError(f"cannot open the output folder '{path}': {exc.strerror or exc}") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Folder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _link_error(self, rel: str) -> LinkInOutputError:
        return LinkInOutputError(f"'{os.path.join(self.path, rel)}' is a symbolic link or not a folder; zfprobe "
                                 "never follows or replaces links in its output folder: remove it or choose "
                                 "another folder with -o")

    @contextmanager
    def parent(self, rel: str, create: bool = False):
        """(descriptor of the folder holding ``rel``, its last part); its folders are created
        when ``create``; FileNotFoundError when one is missing and not ``create``."""
        parts = check_relative(rel).split("/")
        fd = os.dup(self.fd)
        try:
            for i, part in enumerate(parts[:-1]):
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, 0o777, dir_fd=fd)
                    except FileExistsError:
                        pass
                    nfd = self._open_dir(part, fd, "/".join(parts[: i + 1]))
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        raise self._link_error("/".join(parts[: i + 1])) from None
                    raise
                os.close(fd)
                fd = nfd
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def _open_dir(self, part: str, fd: int, rel: str) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                raise self._link_error(rel) from None
            raise

    def lstat(self, rel: str) -> os.stat_result | None:
        """The entry itself (a link is not followed); None when it or a folder on the way is missing."""
        try:
            with self.parent(rel) as (fd, name):
                return os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            return None

    def check_writable(self, rel: str) -> None:
        """Refuse ``rel`` when a folder on its way or the entry itself is a link."""
        st = self.lstat(rel)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise self._link_error(rel)

    def is_dir(self, rel: str) -> bool:
        st = self.lstat(rel)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def rename(self, source: str, target: str) -> None:
        """Move ``source`` to ``target`` (both inside; ``target``'s folders created; a link at
        ``target`` is refused, anything else there is replaced)."""
        self.check_writable(target)
        with self.parent(source) as (sfd, sname), self.parent(target, create=True) as (tfd, tname):
            os.rename(sname, tname, src_dir_fd=sfd, dst_dir_fd=tfd)

    def unlink(self, rel: str) -> None:
        """Remove the file (or link) ``rel`` itself; a missing one is fine."""
        try:
            with self.parent(rel) as (fd, name):
                os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass

    def rmtree(self, rel: str) -> None:
        """Remove the folder ``rel`` and what it holds without following links (a link named
        ``rel`` is removed itself)."""
        try:
            with self.parent(rel) as (fd, name):
                st = os.lstat(name, dir_fd=fd)
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(name, dir_fd=fd)  # fd-based: links inside are removed, not followed
                else:
                    os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass

    def remove_empty_parents(self, rel: str) -> None:
        """Remove the folders of ``rel`` that are empty, deepest first (never the folder itself)."""
        parts = check_relative(rel).split("/")[:-1]
        while parts:
            try:
                with self.parent("/".join(parts)) as (fd, name):
                    os.rmdir(name, dir_fd=fd)
            except OSError:
                return
            parts.pop()

    def read(self, rel: str, limit: int = 64 << 20) -> bytes:
        """The bytes of the regular file ``rel`` (a link or anything else is refused)."""
        with self.parent(rel) as (fd, name):
            try:
                f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise self._link_error(rel) from None
                raise
        try:
            if not stat.S_ISREG(os.fstat(f).st_mode):
                raise self._link_error(rel)
            with os.fdopen(f, "rb", closefd=False) as fh:
                return fh.read(limit)
        finally:
            os.close(f)

    def fsync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError:
            pass
