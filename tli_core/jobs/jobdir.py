"""The job-directory base shared by runs and sweeps: status, stop requests, liveness.

``status.json`` is written only by the job's own process (atomically). Reads never write: a
reader that finds an active state whose process has died reports the job as ended (never as
running forever) without recording it, so a full disk or a read-only copy cannot turn a look
at the runs into an error. A job that could not record its own end (a full disk) reads as ended
with that reason.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from ..errors import TLIError
from ..files import disk_full, overwrite_in_place, read_json_checked, write_json
from .process import now, process_alive, read_tag

ACTIVE = ("queued", "running")


class JobDir:
    """One job's directory. Subclasses name the file that marks the directory and what death means."""

    marker = "config.json"
    kind = "job"
    dead_state = "failed"
    pid_file = "worker.pid"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / self.marker).is_file():
            raise TLIError(f"{self.path} is not a TLI {self.kind} directory (no {self.marker})")

    @property
    def id(self) -> str:
        return self.path.name

    def dead_message(self, status: dict, pid: str) -> str:
        return f"the {self.kind} process (pid {pid}) ended without finishing (killed or crashed)"

    # ---------------------------------------------------------------- status
    def raw_status(self) -> dict:
        """status.json as written; a file that cannot be read, or holds a field of the wrong kind, gives state
        'unreadable' and says why."""
        st, problem = read_json_checked(self.path / "status.json", {}, dict)
        if not problem:
            problem = self.status_problem(st)
            problem = problem and f"status.json: {problem}"
        if problem:
            return {"state": "unreadable", "message": f"unreadable: {problem}"}
        return st

    def status_problem(self, status: dict) -> str | None:
        """Why a parsed status.json cannot be shown (``schema``), or None."""
        return None

    def update_status(self, **changes) -> dict:
        st = self.raw_status()
        st.update(changes, updated=now())
        write_json(self.path / "status.json", st)
        return st

    def record_end(self, **changes) -> dict:
        """The job's last status, by its own process: written atomically if the disk allows, else compactly over
        the old file in place (a full disk has no room for a temporary, but the old file's own bytes are enough);
        returned either way. If neither works, readers see the dead process and say the disk is full."""
        try:
            return self.update_status(**changes)
        except OSError:
            st = dict(self.raw_status(), **changes, updated=now())
            try:
                overwrite_in_place(self.path / "status.json", json.dumps(st, ensure_ascii=False, default=str))
            except OSError:
                pass
            return st

    def process(self, status: dict | None = None) -> str | None:
        st = self.raw_status() if status is None else status
        tag = st.get("process")
        return tag if isinstance(tag, str) and tag else read_tag(self.path / self.pid_file)

    def status(self) -> dict:
        """status.json, with a dead process's active job read as ``dead_state`` (derived, never written)."""
        st = self.raw_status()
        tag = self.process(st)
        if st.get("host") and st["host"] != socket.gethostname():
            return st  # a process on another machine (a cluster node): its liveness cannot be read from here
        if st.get("state") in ACTIVE and tag and not process_alive(tag):
            st = self.raw_status()  # it may have finished between our two reads; dead, it writes no more
        if st.get("state") in ACTIVE and tag and not process_alive(tag):
            st = dict(st, state=self.dead_state, message=self.dead_message(st, tag.split(":")[0])
                      + self.full_disk_note())
        return st

    def full_disk_note(self) -> str:
        """Why a job may have ended without a word: its disk is full (then it could not write one)."""
        return "; the disk holding it is full (No space left on device)" if disk_full(self.path) else ""

    def is_active(self) -> bool:
        """Running, or queued with a live worker; a queued job nobody started is not active."""
        st = self.status()
        if st.get("state") == "running":
            return True
        return st.get("state") == "queued" and bool(self.process(st))

    # ---------------------------------------------------------------- stop
    def request_stop(self) -> None:
        try:
            (self.path / "STOP").write_text(now())
        except OSError as exc:
            raise TLIError(f"could not ask {self.kind} {self.id} to stop: cannot write {self.path / 'STOP'}: "
                           f"{exc.strerror or exc}") from None

    def stop_requested(self) -> bool:
        return (self.path / "STOP").exists()

    def clear_stop(self) -> None:
        """A consumed stop request: the next job in this directory must not see it."""
        (self.path / "STOP").unlink(missing_ok=True)
