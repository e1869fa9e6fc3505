"""The workspace: what a user uploaded or chose, kept on disk so a reload or a server restart loses nothing.

    <home>/                     $TLI_HOME, else 'workspace' beside the runs directory
      pairsets/<hash>.csv       every word-pair set ever used, by content hash ...
      pairsets/<hash>.json      ... with its file name, role, upload time, rows and validation report
      sessions/<id>.json        one browser session's state (active sets, scan settings, the Train form,
                                the run it looked at last); the id travels in the URL (?s=...); the
                                1,000 most recently used are kept
      last.json                 the sets chosen last on this server, for a session that starts fresh

A set is named everywhere by its file name and the first 8 characters of its hash, so two sets
with the same size (the authors' 623 + 63 and the shipped 623 + 63) are never confused.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .errors import TLIError
from .files import read_csv, read_json_checked, write_csv, write_json
from .jobs.process import now
from .pairs import DEFAULT_CONTROL, DEFAULT_TRAINED, pairs_hash, read_pairs
from .runs import default_runs_dir
from .schema import session_problem

SESSION_ID = re.compile(r"[0-9a-f]{12}")
MAX_SESSIONS = 1000  # browser sessions remembered on disk (each a few hundred bytes); the oldest go first


def home() -> Path:
    env = os.environ.get("TLI_HOME")
    return Path(env).expanduser() if env else default_runs_dir().parent / "workspace"


@dataclass
class PairSet:
    hash: str
    name: str  # the file name it came from ("pairs_trained.csv", "word_pairs.json", ...)
    rows: int
    role: str  # trained | control | either
    uploaded: str
    report: list[str]

    @property
    def label(self) -> str:
        return f"{self.name} · {self.hash[:8]}"

    def to_dict(self) -> dict:
        return asdict(self)


def _pairsets() -> Path:
    return home() / "pairsets"


def save_pairs(df: pd.DataFrame, name: str, role: str = "either", report: list[str] | None = None) -> PairSet:
    """Keep a set (once per content); returns its record. The first name it came with stays its name."""
    h = pairs_hash(df)
    meta = get_pairset(h)
    if meta is None:
        meta = PairSet(hash=h, name=str(name), rows=len(df), role=role, uploaded=now(), report=list(report or []))
        try:
            write_csv(_pairsets() / f"{h}.csv", df)
            write_json(_pairsets() / f"{h}.json", meta.to_dict())
        except OSError as exc:
            raise TLIError(f"cannot keep the word pairs in {_pairsets()}: {exc.strerror or exc}") from None
    return meta


def get_pairset(h: str) -> PairSet | None:
    if not re.fullmatch(r"[0-9a-f]{16}", str(h)):
        return None
    data, problem = read_json_checked(_pairsets() / f"{h}.json", None, dict)
    if data is None or problem or not (_pairsets() / f"{h}.csv").is_file():
        return None
    try:
        return PairSet(**data)
    except TypeError:
        return None


def load_pairset(h: str) -> tuple[pd.DataFrame, PairSet]:
    meta = get_pairset(h)
    if meta is None:
        raise TLIError(f"no saved word-pair set {h!r} in {_pairsets()}")
    return read_csv(_pairsets() / f"{h}.csv"), meta


def pairset_path(h: str) -> Path:
    return _pairsets() / f"{h}.csv"


def list_pairsets() -> list[PairSet]:
    if not _pairsets().is_dir():
        return []
    sets = [get_pairset(p.stem) for p in _pairsets().glob("*.json")]
    return sorted([s for s in sets if s], key=lambda s: s.uploaded, reverse=True)


def default_pairsets() -> dict[str, PairSet]:
    """The shipped sets, kept in the store like any other (so runs and links name them the same way)."""
    out = {}
    for role, path in (("trained", DEFAULT_TRAINED), ("control", DEFAULT_CONTROL)):
        df, report = read_pairs(path)
        out[role] = save_pairs(df, f"{path.name} (shipped)", role, report.lines())
    return out


# --------------------------------------------------------------------------- browser sessions

def new_session_id() -> str:
    return secrets.token_hex(6)


def valid_session_id(sid) -> bool:
    return bool(sid) and bool(SESSION_ID.fullmatch(str(sid)))


def read_session(sid: str) -> dict:
    return read_session_checked(sid)[0]


def read_session_checked(sid: str) -> tuple[dict, str | None]:
    """(the session's state, problem): a damaged file gives {} (the session starts afresh) and
    'sessions/ID.json: reason'."""
    if not valid_session_id(sid):
        return {}, None
    data, problem = read_json_checked(home() / "sessions" / f"{sid}.json", {}, dict)
    problem = problem or session_problem(data)
    if problem:
        return {}, f"sessions/{sid}.json: {problem.removeprefix(f'{sid}.json: ')}"
    return data, None


def write_session(sid: str, data: dict) -> None:
    """Best effort: a full disk must not break the page; the state then lives until the tab closes.

    Every visit without ``?s=`` is a new session: when one writes its first file, the least recently
    used beyond :data:`MAX_SESSIONS` are removed, so they cannot pile up without bound."""
    if not valid_session_id(sid):
        return
    path = home() / "sessions" / f"{sid}.json"
    try:
        new = not path.exists()
        write_json(path, dict(data, updated=now()))
        if new:
            prune_sessions(keep=sid)
    except OSError:
        pass


def prune_sessions(keep: str | None = None) -> int:
    """Remove the least recently written session files beyond :data:`MAX_SESSIONS`; returns how many went."""
    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    files = sorted((home() / "sessions").glob("*.json"), key=mtime, reverse=True)
    stale = [p for p in files[MAX_SESSIONS:] if p.stem != keep]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def last_sets() -> dict:
    data, _ = read_json_checked(home() / "last.json", {}, dict)
    return data


def remember_sets(trained: str, control: str) -> None:
    try:
        write_json(home() / "last.json", {"trained": trained, "control": control, "updated": now()})
    except OSError:
        pass
