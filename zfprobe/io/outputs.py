"""Atomic output: a run's files appear all together or not at all, and earlier results survive.

How a run publishes into the output folder ``OUT``:

* **Lock.** ``OUT`` is created if needed and locked (``flock`` on the folder itself) for the whole
  run; a second run into the same folder stops at once with a one-line error.
* **Stage inside OUT.** Files are written into ``OUT/.zfprobe-staging-<pid>-<random>/``, which is
  always on the same file system as their destination (an ``OUT`` that is a mount point or a
  Docker volume works; nothing crosses devices).
* **Journal, then publish.** When every file is complete, ``OUT/.zfprobe-journal.json`` records
  the new files and the stale ones (listed by the previous ``manifest.json`` and not rewritten);
  then the old ``manifest.json`` is removed, files are renamed into place, stale files removed,
  and the new ``manifest.json`` is renamed in last. ``manifest.json`` is the commit marker: a
  reader that finds one sees one complete run, never a mix. SIGINT and SIGTERM wait until the
  publish is done; after a SIGKILL or power loss in the middle, the next run into ``OUT`` (or
  :func:`recover`) completes the journal before anything else.
* **Cleanup.** Staging folders of dead runs (pid gone, or older than a day) are removed; a failed
  run removes its staging folder, and ``OUT`` itself when the run created it.

File names made from layer names go through :func:`safe_file_name`, which is reversible
(:func:`name_from_file`) and therefore unique: ``blk/relu`` and ``blk_relu`` never collide.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from zfprobe.errors import OutputError
from zfprobe.io.interrupts import deferred, note, pause

MANIFEST = "manifest.json"
JOURNAL = ".zfprobe-journal.json"
STAGING_PREFIX = ".zfprobe-staging-"
LEAK_AGE_S = 24 * 3600

# folders this process holds locked: real path -> [fd, holders, created]
_held: dict[str, list] = {}
_live: set[str] = set()  # staging folders of this process's open stages


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
        stale = sorted(set(_manifest_files(self.destination)) - set(self.files)) if self.replace else []
        journal = {"staging": os.path.basename(self._staging), "files": self.files, "stale": stale,
                   "pid": os.getpid(), "time": time.time()}
        try:
            with deferred():  # a SIGINT / SIGTERM now is delivered when the block ends
                write_file_atomically(os.path.join(self.destination, JOURNAL), json.dumps(journal).encode())
                pause("publish")
                _apply_journal(self.destination, journal)
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
    """Complete a publish that a killed run left half done (True if there was one)."""
    path = os.path.join(destination, JOURNAL)
    try:
        with open(path) as f:
            journal = json.load(f)
        staging = journal["staging"]
        if not (isinstance(staging, str) and staging.startswith(STAGING_PREFIX) and "/" not in staging):
            raise ValueError(f"bad staging folder {staging!r}")
        [_check_relative(r) for r in journal["files"] + journal["stale"]]
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError):
        os.unlink(path)  # unreadable: it was never completely written, so nothing was moved
        return False
    _apply_journal(destination, journal)
    return True


def _apply_journal(destination: str, journal: dict) -> None:
    """Rename staged files into place (manifest last), drop stale ones; safe to repeat."""
    staging = os.path.join(destination, journal["staging"])
    files = journal["files"]
    manifest = os.path.join(destination, MANIFEST)
    if MANIFEST in files and os.path.exists(os.path.join(staging, MANIFEST)) and os.path.lexists(manifest):
        os.unlink(manifest)  # from here until the end there is no manifest: readers see "incomplete"
    for rel in sorted(files, key=lambda r: r == MANIFEST):
        source = os.path.join(staging, rel)
        if rel == MANIFEST:
            for stale in journal["stale"]:
                _remove_file(destination, stale)
        if not os.path.lexists(source):
            continue  # moved already (a repeated journal)
        target = os.path.join(destination, rel)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(source, target)
        pause("publish-file")
    if MANIFEST not in files:
        for stale in journal["stale"]:
            _remove_file(destination, stale)
    fsync_dir(destination)
    os.unlink(os.path.join(destination, JOURNAL))
    shutil.rmtree(staging, ignore_errors=True)


def _remove_file(destination: str, rel: str) -> None:
    path = os.path.join(destination, rel)
    if os.path.isfile(path) or os.path.islink(path):
        os.unlink(path)
    parent = os.path.dirname(path)
    while os.path.abspath(parent) != os.path.abspath(destination) and os.path.isdir(parent) and not os.listdir(parent):
        os.rmdir(parent)
        parent = os.path.dirname(parent)


def _manifest_files(destination: str) -> list[str]:
    try:
        with open(os.path.join(destination, MANIFEST)) as f:
            files = json.load(f).get("files", [])
    except (OSError, ValueError, AttributeError):
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
    if not isinstance(relative, str) or not relative or os.path.isabs(relative):
        raise ValueError(f"output file name {relative!r} is not a relative path")
    parts = relative.replace("\\", "/").split("/")
    if any(p in ("", ".", "..") for p in parts) or parts[0].startswith(".zfprobe-"):
        raise ValueError(f"output file name {relative!r} is not allowed")
    return "/".join(parts)


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
    """Staging folders of runs that died (their pid is gone, or they are over a day old)."""
    now = time.time()
    for name in _listdir(destination):
        pid = _staging_pid(name)
        if pid is None:
            continue
        full = os.path.join(destination, name)
        try:
            old = now - os.lstat(full).st_mtime > LEAK_AGE_S
        except OSError:
            continue
        if full not in _live and (old or pid == os.getpid() or not _pid_alive(pid)):
            shutil.rmtree(full, ignore_errors=True)
    for name in _listdir(destination):  # half-written single files (write_file_atomically)
        if name.startswith(".zfprobe-tmp-"):
            try:
                os.unlink(os.path.join(destination, name))
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


def write_file_atomically(path: str, data: bytes) -> None:
    """Write one file so that readers see the old content or the new, never a partial file."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".zfprobe-tmp-", dir=directory)
    except OSError as exc:
        raise OutputError(os_error_message(exc, f"cannot write '{path}'")) from None
    try:
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
