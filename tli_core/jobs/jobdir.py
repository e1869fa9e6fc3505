"""The job-directory base shared by runs and sweeps: status, stop requests, liveness.

``status.json`` is written only by the job's own process (atomically); a reader that finds an
active state whose process has died reports (and records) the job as ended, never as running
forever.
"""

from __future__ import annotations

import socket
from pathlib import Path

from ..errors import TLIError
from ..files import read_json_checked, write_json
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
        """status.json as written; a file that cannot be read gives state 'unreadable' and says why."""
        st, problem = read_json_checked(self.path / "status.json", {}, dict)
        if problem:
            return {"state": "unreadable", "message": f"unreadable: {problem}"}
        return st

    def update_status(self, **changes) -> dict:
        st = self.raw_status()
        st.update(changes, updated=now())
        write_json(self.path / "status.json", st)
        return st

    def process(self, status: dict | None = None) -> str | None:
        st = self.raw_status() if status is None else status
        tag = st.get("process")
        return tag if isinstance(tag, str) and tag else read_tag(self.path / self.pid_file)

    def status(self) -> dict:
        """status.json, with a dead process's active job turned into ``dead_state`` (and saved so)."""
        st = self.raw_status()
        tag = self.process(st)
        if st.get("host") and st["host"] != socket.gethostname():
            return st  # a process on another machine (a cluster node): its liveness cannot be read from here
        if st.get("state") in ACTIVE and tag and not process_alive(tag):
            st = self.raw_status()  # it may have finished between our two reads; dead, it writes no more
        if st.get("state") in ACTIVE and tag and not process_alive(tag):
            st = self.update_status(state=self.dead_state, finished=now(),
                                    message=self.dead_message(st, tag.split(":")[0]))
        return st

    def is_active(self) -> bool:
        """Running, or queued with a live worker; a queued job nobody started is not active."""
        st = self.status()
        if st.get("state") == "running":
            return True
        return st.get("state") == "queued" and bool(self.process(st))

    # ---------------------------------------------------------------- stop
    def request_stop(self) -> None:
        (self.path / "STOP").write_text(now())

    def stop_requested(self) -> bool:
        return (self.path / "STOP").exists()

    def clear_stop(self) -> None:
        """A consumed stop request: the next job in this directory must not see it."""
        (self.path / "STOP").unlink(missing_ok=True)
