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
