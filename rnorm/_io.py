"""Small file-system helpers: atomic writes, an inter-process lock file and an exact CSV reader.

* :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_torch_save` write to a
  temporary file in the *same* folder, flush and fsync it, then ``os.replace`` it over the
  target, so a reader (or a process restarted after a crash) sees either the old file or the
  new one, never a torn one.
* :class:`FileLock` is the ``filelock`` package's lock (``flock``: the kernel releases it when its
  holder dies, so a crashed holder never blocks), holding the owner's pid, hostname, start time
  and a random token in the locked file for the waiters' message. A second process waits (polling)
  until it is released. Records written by the lock of earlier versions (held by the file's
  existence, without a ``flock``) are honoured while their owner lives: the owner is identified by
  its pid *and* its start time and the host's boot id (read from /proc where there is one), so a
  record whose pid was reused by another process after a restart is recognised as stale. A record
  from another host is never declared stale (its pid cannot be checked): remove it by hand if that
  host is gone.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

import filelock


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class DiskFullError(OSError):
    """No space was left on the device while writing a file; names the file."""


def _atomic_write(path, write: Callable[[object], None], mode: str) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if _disk_full(exc, path.parent):
            raise DiskFullError(errno.ENOSPC, f"disk full while writing {path} (the previous version, if any, is "
                                              f"intact); free some space and run again") from exc
        raise
    _fsync_dir(path.parent)
    return path


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """ENOSPC, or an error from a writer that hides it (torch.save reports 'unexpected pos')
    while the file system has (almost) no free space."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    if isinstance(exc, (OSError, RuntimeError)):
        try:
            return shutil.disk_usage(folder).free < 1 << 20
        except OSError:
            return False
    return False


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    return _atomic_write(path, lambda f: f.write(data), "wb")


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj, path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    return _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def replace_dir(staged, target) -> Path:
    """Put the folder ``staged`` in the place of ``target`` (which may exist), all or nothing.

    ``staged`` must be a sibling of ``target`` (same file system). The old folder is first
    renamed aside to ``.<name>.old``, the staged one renamed into place, then the old one
    removed; a crash in between leaves either the complete old or the complete new folder under
    ``target`` (an aside left by a crash is restored or removed by the next call). Readers never
    see old and new files mixed.
    """
    staged, target = Path(staged), Path(target)
    aside = target.with_name(f".{target.name}.old")
    if aside.exists():
        if target.exists():
            shutil.rmtree(aside)
        else:  # a crash after moving the old folder aside: put it back first
            os.replace(aside, target)
    if target.exists():
        os.replace(target, aside)
    os.replace(staged, target)
    _fsync_dir(target.parent)
    if aside.exists():
        shutil.rmtree(aside)
    return target


class LockTimeout(TimeoutError):
    """Waiting for a :class:`FileLock` took longer than its ``timeout``."""


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22),
    or None where it cannot be read (no such process, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after the last ')'
        return int(text[text.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def owner_alive(rec: dict) -> bool:
    """Whether the process that wrote a lock record still runs: its pid exists *and*, where the record
    has them, the host booted with the same boot id and the pid's start time is the recorded one (a
    pid reused after a restart, common in containers, is not the owner)."""
    pid = rec.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return False
    if rec.get("boot_id") is not None and boot_id() is not None and rec["boot_id"] != boot_id():
        return False
    if rec.get("start") is not None:
        now = process_start(pid)
        if now is not None and now != rec["start"]:
            return False
    return True


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_lock(path) -> dict | None:
    """The owner record of lock file ``path`` (``pid``, ``host``, ``token``, ``time``, ``start``, ``boot_id``).

    ``None`` if there is no lock; ``{}`` if it exists but cannot be parsed (empty, or being written).
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        rec = json.loads(text)
    except ValueError:
        return {}
    return rec if isinstance(rec, dict) else {}


class FileLock:
    """An inter-process lock on the file ``path``: :class:`filelock.FileLock` (``flock``, which the kernel
    releases when its holder dies, so a crashed holder never blocks anyone), with the holder's record
    (:func:`read_lock`: pid, host, start time) written into the locked file, for the waiters' message,
    and the file removed on release: it exists exactly while the lock is held.

    Use as a context manager or with :meth:`acquire` / :meth:`release`. While another process
    holds it, :meth:`acquire` polls every ``poll`` seconds and calls ``on_wait(message)`` once
    (default: print to stderr); after ``timeout`` seconds (``None`` = forever) it raises
    :class:`LockTimeout`. Not re-entrant.

    Records without a ``flock``, written by the lock file of earlier versions (created with ``O_EXCL``,
    the lock held by its existence: the long trainings running when this changed), are honoured both
    ways: this lock writes the same record, and a record found on taking the ``flock`` that names a live
    process on this host (pid and start time, :func:`owner_alive`) or any process of another host (which
    cannot be checked), or an unreadable one younger than ``empty_grace`` seconds (being written), counts
    as held. A record of a dead process is stale: it is replaced, and :attr:`recovered_stale` says so.
    """

    def __init__(self, path, *, poll: float = 1.0, timeout: float | None = None,
                 on_wait: Callable[[str], None] | None = None, empty_grace: float = 30.0):
        self.path = Path(path)
        self.poll = float(poll)
        self.timeout = timeout
        self.on_wait = on_wait if on_wait is not None else _print_stderr
        self.empty_grace = float(empty_grace)
        self.token: str | None = None
        self.recovered_stale = False
        self._flock = filelock.FileLock(self.path, thread_local=False)

    def _held_by_record(self, rec: dict | None, existed: bool) -> bool:
        """Whether a record found under our ``flock`` belongs to a holder without one (class docstring)."""
        if rec is None or (not rec and not existed):  # none, or the empty file filelock just created
            return False
        if not rec:  # exists but unreadable: being written only while young
            try:
                return time.time() - self.path.stat().st_mtime <= self.empty_grace
            except FileNotFoundError:
                return False
        return rec.get("host") != socket.gethostname() or owner_alive(rec)

    def _try_acquire(self) -> bool | dict | None:
        """Take the lock if it is free (True), else the record of whoever holds it (None or {}: not known)."""
        existed = self.path.exists()
        try:
            self._flock.acquire(blocking=False)
        except filelock.Timeout:
            return read_lock(self.path)
        rec = read_lock(self.path)
        if self._held_by_record(rec, existed):
            self._flock.release()
            return rec
        self.recovered_stale = bool(rec) or (rec == {} and existed)  # a dead holder's record, replaced
        token = uuid.uuid4().hex
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "token": token, "time": time.time(),
                "start": process_start(os.getpid()), "boot_id": boot_id()}
        with open(self.path, "w") as f:  # the file filelock holds (flock is advisory: a second fd may write)
            f.write(json.dumps(mine))
            f.flush()
            os.fsync(f.fileno())
        self.token = token
        return True

    def describe_owner(self, rec: dict | None = None) -> str:
        rec = read_lock(self.path) if rec is None else rec
        if not rec:
            return "an unknown process"
        return f"pid {rec.get('pid')} on host {rec.get('host')!r}"

    def acquire(self) -> "FileLock":
        if self.token is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        start = time.monotonic()
        told = False
        while True:
            rec = self._try_acquire()
            if rec is True:
                return self
            if not told:
                self.on_wait(f"waiting for lock {self.path} held by {self.describe_owner(rec or {})} "
                             f"(polling every {self.poll:g} s; remove the file if that process is gone)")
                told = True
            if self.timeout is not None and time.monotonic() - start > self.timeout:
                raise LockTimeout(f"lock {self.path} still held by {self.describe_owner()} after "
                                  f"{self.timeout:g} s")
            time.sleep(self.poll)

    def release(self) -> None:
        """Remove the file (while still holding the ``flock``: a waiter that then locks the removed file
        sees it unlinked and retries, filelock's own check), then release."""
        if self.token is None:
            return
        rec = read_lock(self.path)
        if rec and rec.get("token") == self.token:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.token = None
        self._flock.release()

    @property
    def held(self) -> bool:
        return self.token is not None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _print_stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def read_csv_exact(path, **kw):
    """``pandas.read_csv`` with an exact float round trip (the default from pandas 3 on), so that a
    value written and read back compares equal; per-image bit columns stay strings."""
    import pandas as pd
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    return pd.read_csv(path, dtype={"correct_bits": str, "scored_bits": str}, **exact, **kw)
