"""The output directory lock: one live training run per ``train.output_dir``.

Not a paper section: ``train.py``'s guard against two runs writing the same checkpoints
(docs/reliability.md).

Conventions pinned here:
- The lock is ``<output_dir>/.lock``, held with an OS-level ``flock`` for the life of the run
  (the OS drops it when the process dies, however it dies); while held it names the holder as
  one JSON line ``{"pid", "host", "started"}``.
- A second run refuses with ``OutputDirInUse``, one line naming the directory and the holder.
- Released cleanly, the file is emptied (not removed: removing a locked file lets a third run
  lock a new file while a second waits on the old one). A non-empty file whose lock is free
  was left by a process that died holding it: the next run takes it over and says so.
- Re-entrant within a process (``run.train_and_evaluate`` holds it across ``run.train``).
- Where ``flock`` is unavailable (no ``fcntl``, or a file system without locks) the holder
  line decides: a live pid on this host, or any holder on another host, refuses.
- Only the process that writes the outputs locks (the chief of a multi-worker job; the other
  workers write to temporary directories).
"""
import contextlib
import datetime
import errno
import json
import os
import socket

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"
_HELD = {}  # real path of a lock file -> [fd, depth] (re-entrant within the process)


class OutputDirInUse(RuntimeError):
    """Another live run holds the output directory; ``str()`` names the directory and it."""


@contextlib.contextmanager
def output_dir_lock(directory, log=print):
    """Holds ``<directory>/.lock`` for the ``with`` block (creating the directory).

    Raises:
      OutputDirInUse: another live process holds it.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.realpath(os.path.join(directory, LOCK_NAME))
    if path in _HELD:
        _HELD[path][1] += 1
    else:
        _HELD[path] = [_acquire(directory, path, log), 1]
    try:
        yield path
    finally:
        _HELD[path][1] -= 1
        if not _HELD[path][1]:
            _release(_HELD.pop(path)[0])


def _acquire(directory, path, log):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        holder = _read_holder(fd)
        if not _flock(fd):
            raise OutputDirInUse(f"{directory} is in use by {_describe(holder)} (lock "
                                 f"{path}): wait for that run to end, or set another "
                                 "train.output_dir")
        previous = _read_holder(fd)  # under the lock: what a dead holder left
        if previous is not None:
            log(f"{directory}: taking over the lock left by {_describe(previous)}, which "
                "ended without releasing it")
        _write_holder(fd)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _flock(fd):
    """True when this process now holds the lock; False when another live process does."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
    holder = _read_holder(fd)  # no flock here: trust the holder line
    if holder is None:
        return True
    if holder.get("host") != socket.gethostname():
        return False
    return not _pid_alive(holder.get("pid"))


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _read_holder(fd):
    """The holder line of a lock file; None when empty (released); {} when unreadable."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _write_holder(fd):
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds")}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(holder) + "\n").encode())
    os.fsync(fd)


def _release(fd):
    try:
        os.ftruncate(fd, 0)  # released cleanly: no holder
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _describe(holder):
    if not holder:
        return "another process (holder unknown)"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (started "
            f"{holder.get('started', '?')})")
