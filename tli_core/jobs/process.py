"""Processes behind jobs: who is alive, the one-job-at-a-time lock, and starting a worker.

A process is identified by a tag 'pid:start' -- the start time (clock ticks since boot, from
/proc) makes a reused pid differ. One job at a time per runs directory: the worker holds an
exclusive lock on ``<runs>/.train.lock`` while it lives; the operating system drops the lock
when the process ends, however it ends.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..files import write_text

LOCK_NAME = ".train.lock"
LAUNCH_LOCK_NAME = ".launch.lock"
STARTING_NAME = ".starting"
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def process_tag(pid: int) -> str | None:
    """'pid:start', or None if there is no such process or it is a zombie (ended, not reaped).

    Without /proc (not Linux) the tag is 'pid:?' and only the pid is checked.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(int(pid), 0)
        except OSError:
            return None
        return f"{pid}:?"
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X") and not _threads_exiting(pid):
        return None
    return f"{pid}:{fields[19]}"


def _threads_exiting(pid: int) -> bool:
    """A killed process's main thread reads 'Z' while its other threads are still exiting, and until they have
    exited its files (and so its locks) are still open: it is not gone yet."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X"):
            return True
    return False


def my_process_tag() -> str:
    return process_tag(os.getpid()) or f"{os.getpid()}:?"


def process_alive(tag: str | None) -> bool:
    if not tag:
        return False
    pid, _, _ = str(tag).partition(":")
    try:
        return process_tag(int(pid)) == str(tag)
    except ValueError:
        return False


def read_tag(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


class JobLock:
    """Exclusive, process-lifetime lock on a runs directory (released by the OS on any exit)."""

    def __init__(self, runs_dir: str | Path):
        self.path = Path(runs_dir) / LOCK_NAME
        self._fh = None

    def acquire(self, holder: str) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(holder)
        fh.flush()
        self._fh = fh
        starting = self.path.parent / STARTING_NAME  # this worker was "starting" until now: the lock speaks for it
        if read_tag(starting) and read_tag(starting).partition("\n")[0] == my_process_tag():
            starting.unlink(missing_ok=True)
        return True

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def holder(self) -> str | None:
        """Who holds the lock right now, or None if it is free."""
        if not self.path.exists():
            return None
        with open(self.path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                return fh.read().strip() or "another process"
            fcntl.flock(fh, fcntl.LOCK_UN)
            return None


class LaunchLock:
    """``with LaunchLock(runs_dir):`` around "is the runs directory free? -> create the job -> start its worker".

    Two servers (or two browser sessions) pressing Launch at once would otherwise both pass the check before
    either worker holds the :class:`JobLock`; now the second waits, then sees the first job. Re-entrant within
    a thread (a sweep's start calls its resume); the OS drops it if the holder dies.
    """

    _held = threading.local()

    def __init__(self, runs_dir: str | Path, timeout: float = 60.0):
        self.path = Path(runs_dir) / LAUNCH_LOCK_NAME
        self.timeout = timeout
        self._fh = None

    def __enter__(self) -> "LaunchLock":
        counts = self._held.__dict__.setdefault("counts", {})
        key = str(self.path.resolve())
        if counts.get(key):
            counts[key] += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    fh.close()
                    from ..errors import TLIError

                    raise TLIError("another job is being started in this runs directory; try again") from None
                time.sleep(0.05)
        self._fh, counts[key] = fh, 1
        return self

    def __exit__(self, *exc) -> None:
        counts = self._held.counts
        key = str(self.path.resolve())
        counts[key] -= 1
        if not counts[key] and self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def mark_starting(runs_dir: str | Path, pid: int, job: str) -> None:
    """Record a worker just started for ``runs_dir``: until it holds the JobLock, it makes the directory busy."""
    write_text(Path(runs_dir) / STARTING_NAME, f"{process_tag(pid) or f'{pid}:?'}\n{job}")


def starting_worker(runs_dir: str | Path) -> str | None:
    """'JOB, pid N' for a worker started for ``runs_dir`` that is still alive, or None."""
    tag, _, job = (read_tag(Path(runs_dir) / STARTING_NAME) or "").partition("\n")
    return f"{job.strip() or 'a job'}, pid {tag.split(':')[0]}" if process_alive(tag) else None


def spawn_worker(command: str, target: Path, log_path: Path, pid_file: str = "worker.pid",
                 extra_args: list[str] | None = None) -> int:
    """Start ``python -m tli_core COMMAND TARGET`` in its own session; return its pid.

    Closing the browser or restarting the page does not stop it; a thread reaps it when it
    ends so it never lingers as a zombie. Its process tag goes to ``TARGET/<pid_file>``.
    """
    log = open(log_path, "ab")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-m", "tli_core", command, str(target), *(extra_args or [])],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=str(PROJECT_ROOT), env=env)
    log.close()
    tag = process_tag(proc.pid) or f"{proc.pid}:?"
    write_text(Path(target) / pid_file, tag)  # status.json is the worker's alone to write
    threading.Thread(target=proc.wait, daemon=True).start()
    return proc.pid
