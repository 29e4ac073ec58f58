"""Atomic output: a run's files appear all together or not at all, and earlier results survive.

How a run publishes into the output folder ``OUT``:

* **Lock.** ``OUT`` is created if needed and locked (``flock`` on the folder itself) for the whole
  run; a second run into the same folder stops at once with a one-line error.
* **Stage inside OUT.** Files are written into ``OUT/.zfprobe-staging-<pid>-<random>/``, which is
  always on the same file system as their destination (an ``OUT`` that is a mount point or a
  Docker volume works; nothing crosses devices).
* **Journal, then publish.** When every file is complete, and no link sits where a file is
  published or removed, ``OUT/.zfprobe-journal.json`` records the new files (with their inode
  numbers) and the stale ones (listed by the previous ``manifest.json`` and not rewritten). Then
  each earlier file (the old manifest first) is moved aside into the staging folder and the new
  one renamed into place, stale files are moved aside too, the new ``manifest.json`` is renamed in
  last, and removing the journal commits. ``manifest.json`` is the commit marker for readers: a
  folder with one holds one complete run, never a mix. SIGINT and SIGTERM wait until the publish
  is done. After a SIGKILL or power loss before the commit, the next run into ``OUT`` (or
  :func:`recover`) rolls back: every earlier file returns byte for byte and the new ones (known by
  inode) go.
* **Confined.** Every move and removal goes through :class:`zfprobe.io.confined.Folder`: paths
  from a manifest or journal are checked (relative, normalized, no ``..``) and walked with
  ``O_NOFOLLOW`` from the folder's descriptor, so a symbolic link planted in ``OUT`` is a one-line
  error, never followed. A journal zfprobe did not write (corrupt, crafted, an older format) is
  refused with one line, never obeyed.
* **Cleanup.** Staging folders of dead runs (pid gone, or older than a day) are removed, links
  among them removed themselves; a failed run removes its staging folder, and ``OUT`` itself when
  the run created it.

File names made from layer names go through :func:`safe_file_name`, which is reversible
(:func:`name_from_file`) and therefore unique: ``blk/relu`` and ``blk_relu`` never collide.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import time
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from zfprobe.errors import OutputError
from zfprobe.io.confined import Folder, LinkInOutputError, check_relative
from zfprobe.io.interrupts import deferred, note, pause

MANIFEST = "manifest.json"
JOURNAL = ".zfprobe-journal.json"
JOURNAL_VERSION = 2
BACKUP = ".zfprobe-earlier"  # inside the staging folder: the earlier files a publish set aside
STAGING_PREFIX = ".zfprobe-staging-"
LEAK_AGE_S = 24 * 3600

# folders this process holds locked: real path -> [fd, holders, created]
_held: dict[str, list] = {}
_live: set[str] = set()  # staging folders of this process's open stages
_steps = [0]  # publish steps taken by this process (the SIGKILL test hook counts them)


def os_error_message(exc: OSError, what: str, writing: bool = True) -> str:
    """One line for an OSError a user can act on (permission, read-only, disk full, ...)."""
    reason = exc.strerror or str(exc)
    if not writing:
        return f"{what}: {reason}"
    hint = {errno.ENOSPC: "; free some space or choose another folder with -o",
            errno.EROFS: "; choose a writable folder with -o",
            errno.EACCES: "; choose a folder you can write with -o",
            errno.EPERM: "; choose a folder you can write with -o",
            errno.EDQUOT: "; free some space or choose another folder with -o"}.get(exc.errno, "")
    return f"{what}: {reason}{hint}"


def check_output_path(destination: str) -> str:
    """Refuse output folders that cannot be one (empty name, an existing file); returns abs path."""
    if destination is None or not str(destination).strip():
        raise OutputError("the output folder name is empty; give one with -o")
    path = os.path.abspath(os.fspath(destination))
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"output '{destination}' exists and is not a folder; choose a folder name with -o")
    return path


def check_output_file(path: str) -> str:
    """Refuse single-file outputs that cannot be one (empty name, a folder); returns abs path."""
    if path is None or not str(path).strip():
        raise OutputError("the output file name is empty; give one with -o")
    full = os.path.abspath(os.fspath(path))
    if os.path.isdir(full):
        raise OutputError(f"output '{path}' is a folder; give a file name with -o")
    parent = os.path.dirname(full)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise OutputError(f"cannot write '{path}': '{parent}' is not a folder")
    return full


@contextmanager
def output_lock(destination: str, keep_on_interrupt: bool = True):
    """Hold ``destination`` (created if missing) locked against other runs for the block.

    A run that fails inside the block and created the folder removes it again; so does an
    interrupted one, unless ``keep_on_interrupt`` and the folder holds something besides
    zfprobe's scratch files (a mining checkpoint is meant to survive Ctrl-C).
    """
    path = check_output_path(destination)
    key = os.path.realpath(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield path
        finally:
            _held[key][1] -= 1
        return
    created = path  # the topmost folder this run creates (removed again if the run fails)
    while not os.path.exists(os.path.dirname(created)) and os.path.dirname(created) != created:
        created = os.path.dirname(created)
    created = created if not os.path.exists(created) else None
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise OutputError(os_error_message(exc, f"cannot create the output folder '{destination}'")) from None
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        pids = sorted({_staging_pid(n) for n in _listdir(path) if _staging_pid(n)})
        who = f" (pid {', '.join(map(str, pids))})" if pids else ""
        raise OutputError(f"another zfprobe run{who} is writing to '{destination}'; wait for it to finish "
                          "or choose another folder with -o") from None
    _held[key] = [fd, 1, created]
    ok = False
    try:
        recover(path)
        _remove_leaked_staging(path)
        yield path
        ok = True
    except KeyboardInterrupt:
        ok = keep_on_interrupt and any(not n.startswith((STAGING_PREFIX, ".zfprobe-")) for n in _listdir(path))
        raise
    finally:
        del _held[key]
        if created and not ok:
            shutil.rmtree(created, ignore_errors=True)
        os.close(fd)  # releases the lock


class OutputStage:
    """Collects a run's output files, then publishes them into ``destination`` at once.

    ``replace`` (default): files of the previous run listed in its manifest and not written again
    are removed at publish time. ``replace=False`` adds files to a folder and removes nothing.
    Other files in the folder (a mining checkpoint, the user's own files) are left alone.
    """

    def __init__(self, destination: str, replace: bool = True):
        self.destination = check_output_path(destination)
        self.replace = replace
        self.files: list[str] = []
        self._committed = False
        self._lock = output_lock(self.destination, keep_on_interrupt=False)
        self._lock.__enter__()
        try:
            self._staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.destination)
            _live.add(self._staging)
        except OSError as exc:
            self._release(exc)
            raise OutputError(os_error_message(exc, f"cannot write into the output folder '{destination}'")) from None

    # -- writing ---------------------------------------------------------------------------------
    def path(self, relative: str) -> str:
        relative = _check_relative(relative)
        if relative in self.files:
            raise ValueError(f"output file '{relative}' written twice in one run")
        full = os.path.join(self._staging, relative)
        try:
            os.makedirs(os.path.dirname(full), exist_ok=True)
        except OSError as exc:
            raise OutputError(os_error_message(exc, f"cannot write into '{self.destination}'")) from None
        self.files.append(relative)
        return full

    def write_png(self, relative: str, image: np.ndarray) -> str:
        from PIL import Image

        with self._writing():
            Image.fromarray(image).save(self.path(relative), format="PNG")
        return relative

    def write_json(self, relative: str, data: Any) -> str:
        text = json.dumps(data, indent=2, default=_jsonable) + "\n"
        return self.write_bytes(relative, text.encode())

    def write_bytes(self, relative: str, data: bytes) -> str:
        with self._writing(), open(self.path(relative), "wb") as f:
            f.write(data)
        return relative

    @contextmanager
    def _writing(self):
        try:
            yield
        except OSError as exc:
            raise OutputError(os_error_message(exc, f"cannot write into '{self.destination}'")) from None

    # -- publishing ------------------------------------------------------------------------------
    def commit(self) -> list[str]:
        """Publish every staged file into the destination (see the module doc); final paths."""
        if self._committed:
            raise RuntimeError("OutputStage.commit called twice")
        try:
            with Folder(self.destination) as folder:
                stale = sorted(set(_manifest_files(folder)) - set(self.files)) if self.replace else []
                staging = os.path.basename(self._staging)
                inodes = _preflight(folder, staging, self.files, stale)
                journal = {"version": JOURNAL_VERSION, "staging": staging, "files": self.files, "stale": stale,
                           "inodes": inodes, "pid": os.getpid(), "time": time.time()}
                with deferred():  # a SIGINT / SIGTERM now is delivered when the block ends
                    write_file_atomically(os.path.join(self.destination, JOURNAL), json.dumps(journal).encode())
                    _test_kill_point()
                    pause("publish")
                    _apply_journal(folder, journal)
                    self._committed = True
                    _live.discard(self._staging)
                    note(f"the output was complete and published to {self.destination} before the interruption")
        except OSError as exc:
            raise OutputError(os_error_message(exc, f"cannot publish into '{self.destination}'")) from None
        finally:
            if self._committed:
                self._release(None)
        return [os.path.join(self.destination, rel) for rel in self.files]

    def discard(self) -> None:
        """Drop the staged files; the destination stays as it was."""
        if self._committed or self._lock is None:
            self._release(None)
            return
        shutil.rmtree(self._staging, ignore_errors=True)
        _live.discard(self._staging)
        self._release(RuntimeError("discarded"))

    def _release(self, exc: BaseException | None) -> None:
        lock, self._lock = self._lock, None
        if lock is None:
            return
        if exc is None:
            lock.__exit__(None, None, None)
        else:
            try:
                lock.__exit__(type(exc), exc, None)
            except BaseException:
                pass

    def __enter__(self) -> "OutputStage":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.discard()


def recover(destination: str) -> bool:
    """Undo a publish that a killed run left half done: the earlier result comes back byte for
    byte (True if there was one). A journal zfprobe did not write is refused, never obeyed."""
    with Folder(destination) as folder:
        journal = _read_journal(folder)
        if journal is None:
            return False
        _roll_back(folder, journal)
    return True


def _read_journal(folder: Folder) -> dict | None:
    """The journal in ``folder`` (None without one), checked entry by entry: every path relative
    and inside the folder, the staging folder a real folder of zfprobe's naming."""
    if folder.lstat(JOURNAL) is None:
        return None
    where = os.path.join(folder.path, JOURNAL)
    try:
        journal = json.loads(folder.read(JOURNAL, limit=256 << 20))
        if not isinstance(journal, dict) or journal.get("version") != JOURNAL_VERSION:
            raise ValueError("unknown format")
        staging, files, stale, inodes = journal["staging"], journal["files"], journal["stale"], journal["inodes"]
        if not (isinstance(staging, str) and re.fullmatch(r"\.zfprobe-staging-\d+-[A-Za-z0-9_]+", staging)):
            raise ValueError(f"bad staging folder {staging!r}")
        if not folder.is_dir(staging):
            raise ValueError(f"its staging folder {staging!r} is missing or not a folder")
        if not (isinstance(files, list) and isinstance(stale, list) and isinstance(inodes, dict)):
            raise ValueError("bad file lists")
        for rel in files + stale:
            if _check_relative(rel) != rel:
                raise ValueError(f"file name {rel!r} is not normalized")
            folder.check_writable(rel)  # a link on the way: LinkInOutputError, never followed
        if len(set(files)) != len(files) or len(set(stale)) != len(stale) or set(files) & set(stale):
            raise ValueError("a file is listed twice")
        if set(inodes) != set(files) or not all(isinstance(v, int) and v >= 0 for v in inodes.values()):
            raise ValueError("bad inode list")
    except LinkInOutputError:
        raise
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise OutputError(f"'{where}' is not a publish journal zfprobe wrote ({exc}); zfprobe does not act on "
                          "it: look at the folder, then delete that file to go on") from None
    return journal


def _preflight(folder: Folder, staging: str, files: list[str], stale: list[str]) -> dict[str, int]:
    """Refuse (before anything moves) a link where a file is published or removed; the staged
    files' inode numbers, which let a rollback tell the new files from the user's."""
    for rel in files + stale:
        folder.check_writable(rel)
    inodes = {}
    for rel in files:
        st = folder.lstat(f"{staging}/{rel}")
        if st is None or not stat.S_ISREG(st.st_mode):
            raise OutputError(f"staged file '{rel}' is missing from '{os.path.join(folder.path, staging)}'")
        inodes[rel] = st.st_ino
    return inodes


def _apply_journal(folder: Folder, journal: dict) -> None:
    """Move each earlier file aside (into the staging folder), the new one into place (manifest
    last), then remove the journal: that is the commit. A failure before it rolls back."""
    staging, files = journal["staging"], journal["files"]
    aside = f"{staging}/{BACKUP}"
    try:
        if MANIFEST in files:
            _set_aside(folder, aside, MANIFEST)  # from here until the commit, readers see "incomplete"
        for rel in files:
            if rel == MANIFEST:
                continue
            _set_aside(folder, aside, rel)
            folder.rename(f"{staging}/{rel}", rel)
            _test_kill_point()
            pause("publish-file")
        for rel in journal["stale"]:
            _set_aside(folder, aside, rel)
        if MANIFEST in files:
            folder.rename(f"{staging}/{MANIFEST}", MANIFEST)
            _test_kill_point()
        folder.fsync()
    except BaseException:
        try:
            _roll_back(folder, journal)
        except (OSError, OutputError):
            pass  # the journal stays: the next run into the folder rolls back
        raise
    folder.unlink(JOURNAL)  # the commit point
    folder.fsync()
    _test_kill_point()
    for rel in journal["stale"]:
        folder.remove_empty_parents(rel)
    folder.rmtree(staging)


def _set_aside(folder: Folder, aside: str, rel: str) -> None:
    if folder.lstat(rel) is not None:
        folder.check_writable(rel)
        folder.rename(rel, f"{aside}/{rel}")
        _test_kill_point()


def _roll_back(folder: Folder, journal: dict) -> None:
    """Put every earlier file back and remove the new ones (known by inode), then the journal."""
    staging, inodes = journal["staging"], journal["inodes"]
    aside = f"{staging}/{BACKUP}"
    for rel in dict.fromkeys([MANIFEST, *journal["files"], *journal["stale"]]):
        if folder.lstat(f"{aside}/{rel}") is not None:
            folder.rename(f"{aside}/{rel}", rel)
        elif rel in inodes and folder.lstat(f"{staging}/{rel}") is None:
            st = folder.lstat(rel)
            if st is not None and stat.S_ISREG(st.st_mode) and st.st_ino == inodes[rel]:
                folder.unlink(rel)
                folder.remove_empty_parents(rel)
    folder.fsync()
    folder.unlink(JOURNAL)
    folder.fsync()
    folder.rmtree(staging)


def _test_kill_point() -> None:
    """Test hook: ``ZFPROBE_TEST_SIGKILL_AT_PUBLISH_STEP=k`` SIGKILLs this process at the k-th
    step of a publish (journal written, each rename, commit), to test every moment of it."""
    want = os.environ.get("ZFPROBE_TEST_SIGKILL_AT_PUBLISH_STEP")
    if not want:
        return
    _steps[0] += 1
    if str(_steps[0]) == want:
        os.kill(os.getpid(), signal.SIGKILL)


def _manifest_files(folder: Folder) -> list[str]:
    """The files the earlier run's manifest lists (those that are valid paths inside the folder)."""
    try:
        files = json.loads(folder.read(MANIFEST)).get("files", [])
    except LinkInOutputError:
        raise
    except (OSError, ValueError, AttributeError, UnicodeDecodeError):
        return []
    out = []
    for rel in files if isinstance(files, list) else []:
        try:
            out.append(_check_relative(rel))
        except ValueError:
            pass
    return out


def _check_relative(relative: str) -> str:
    """A path inside the output folder: relative, no '..', not one of zfprobe's own names."""
    try:
        return check_relative(relative, reserved=".zfprobe-")
    except ValueError as exc:
        raise ValueError(f"output {exc}") from None

def _staging_pid(name: str) -> int | None:
    if not name.startswith(STAGING_PREFIX):
        return None
    head = name[len(STAGING_PREFIX):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_leaked_staging(destination: str) -> None:
    """Staging folders of runs that died (their pid is gone, or they are over a day old), and
    half-written single files; removed without following any link (a link with such a name is
    removed itself, never what it points to)."""
    now = time.time()
    with Folder(destination) as folder:
        for name in _listdir(destination):
            pid = _staging_pid(name)
            st = folder.lstat(name) if pid is not None or name.startswith(".zfprobe-tmp-") else None
            if st is None:
                continue
            if name.startswith(".zfprobe-tmp-") or stat.S_ISLNK(st.st_mode):
                folder.unlink(name)
                continue
            full = os.path.join(destination, name)
            if full not in _live and (now - st.st_mtime > LEAK_AGE_S or pid == os.getpid() or not _pid_alive(pid)):
                try:
                    folder.rmtree(name)
                except OSError:
                    pass


def fsync_dir(path: str) -> None:
    """Make a folder's renames durable (best effort: some file systems refuse it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def safe_file_name(name: str) -> str:
    """A file name for ``name`` (e.g. a layer): reversible with :func:`name_from_file`, so two
    names never share a file. Letters, digits, ``-_.`` stay; everything else is %XX-encoded."""
    if not name:
        raise ValueError("empty name")
    s = quote(name, safe="-_.")
    if s.startswith("."):
        s = "%2E" + s[1:]
    if len(s.encode()) > 200:  # file systems stop at 255 bytes: keep a unique, hashed tail
        import hashlib

        s = s[:160] + "~" + hashlib.sha256(name.encode()).hexdigest()[:24]
    return s


def name_from_file(file_name: str) -> str:
    """The name :func:`safe_file_name` encoded (for names under 200 bytes)."""
    return unquote(file_name)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def current_umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_file_atomically(path: str, data: bytes) -> None:
    """Write one file so that readers see the old content or the new, never a partial file."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".zfprobe-tmp-", dir=directory)
    except OSError as exc:
        raise OutputError(os_error_message(exc, f"cannot write '{path}'")) from None
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # like any file the user creates, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(os_error_message(exc, f"cannot write '{path}'")) from None
        raise
