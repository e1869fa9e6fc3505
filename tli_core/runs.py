"""Run directories: everything a TLI run produces, written atomically, readable while it runs.

    <runs>/<run id>/
      config.json          the TLIConfig, verbatim
      status.json          state (queued/running/done/failed/stopped), phase, pid, step/total, times, versions;
                           "evaluation": a later re-evaluation of the saved adapter (running/done/failed)
      metrics.jsonl        one JSON object per optimiser step
      train.log            the worker's log
      pairs_trained.csv    the exact pairs used (copies, so the run is self-contained)
      pairs_control.csv
      checkpoints/epoch_N/ PEFT adapter after each epoch
      adapter/             the final (or stopped) PEFT adapter
      eval/                pairs.csv, pairs_layers.csv, curve.csv, layer_stats.csv
      summary.json         headline statistics
      STOP                 present when a stop was requested

A run whose worker process died (crash, SIGKILL, reboot) is reported as failed the next
time it is read, never as running forever (``jobs.jobdir``); one job at a time per runs
directory (``jobs.process.JobLock``).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import time
import zipfile
from pathlib import Path

import pandas as pd

from .config import TLIConfig
from .errors import TLIError
from .files import publish_dir, read_json, write_csv, write_json
from .jobs.jobdir import JobDir
from .jobs.process import PROJECT_ROOT, now, process_alive, read_tag
from .pairs import load_pairs

STATES = ("queued", "running", "done", "failed", "stopped")


def default_runs_dir() -> Path:
    return Path(os.environ.get("TLI_RUNS_DIR", PROJECT_ROOT / "runs")).expanduser()


class Run(JobDir):
    """One run directory."""

    kind = "run"

    def dead_message(self, status: dict, pid: str) -> str:
        return (f"the worker process (pid {pid}) ended without finishing (killed or crashed) during "
                f"{status.get('phase', 'the run')}; see train.log")

    # ---------------------------------------------------------------- files
    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    def config(self) -> TLIConfig:
        return TLIConfig.from_dict(read_json(self.path / "config.json"))

    def config_dict(self) -> dict:
        return read_json(self.path / "config.json", {})

    def evaluation(self) -> dict:
        """The latest re-evaluation of the saved adapter ({} if none): running, done or failed.

        A launched evaluator counts as running from its first instant (its tag is in
        ``evaluate.pid`` before it writes anything); a dead one that never finished is failed.
        """
        ev = self.raw_status().get("evaluation") or {}
        launched = read_tag(self.path / "evaluate.pid")
        if launched and launched != ev.get("process") and process_alive(launched):
            return {"state": "running", "phase": "starting", "process": launched}
        if ev.get("state") == "running" and not process_alive(ev.get("process")):
            ev = self.raw_status().get("evaluation") or {}  # it may have finished between our two reads
        if ev.get("state") == "running" and not process_alive(ev.get("process")):
            ev = dict(ev, state="failed", finished=now(),
                      message=f"the evaluation process (pid {str(ev.get('process')).split(':')[0]}) ended "
                              f"without finishing (killed or crashed); see train.log")
            self.update_status(evaluation=ev)
        return ev

    def is_evaluating(self) -> bool:
        return self.evaluation().get("state") == "running"

    def append_metric(self, row: dict) -> None:
        # One write() of one line: a reader (or a SIGKILL) never sees half a line.
        line = (json.dumps(row, default=float) + "\n").encode()
        fd = os.open(self.path / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def metrics(self) -> pd.DataFrame:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return pd.DataFrame()
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return pd.DataFrame(rows)

    def log(self, message: str) -> None:
        with open(self.log_path, "a") as fh:
            fh.write(f"{now()} {message}\n")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def summary(self) -> dict | None:
        return read_json(self.path / "summary.json")

    def table(self, name: str) -> pd.DataFrame | None:
        path = self.eval_dir / f"{name}.csv"
        return pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.is_file() else None

    def pairs(self, which: str) -> pd.DataFrame:
        return load_pairs(self.path / f"pairs_{which}.csv")

    def checkpoints(self) -> list[Path]:
        d = self.path / "checkpoints"
        if not d.is_dir():
            return []
        return sorted(d.glob("epoch_*"), key=lambda p: int(p.name.split("_")[1]))

    def has_adapter(self) -> bool:
        return (self.adapter_dir / "adapter_config.json").is_file()

    def save_adapter(self, peft_model, target: Path) -> None:
        """save_pretrained into a temporary directory, then rename: never half an adapter."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        peft_model.save_pretrained(tmp)
        publish_dir(tmp, target)

    def adapter_zip(self) -> bytes:
        """The final adapter (and the config) as a zip, for download."""
        if not self.has_adapter():
            raise TLIError(f"run {self.id} has no saved adapter")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(self.adapter_dir.rglob("*")):
                if f.is_file():
                    zf.write(f, f"{self.id}/adapter/{f.relative_to(self.adapter_dir)}")
            zf.write(self.path / "config.json", f"{self.id}/config.json")
        return buf.getvalue()


# --------------------------------------------------------------------------- the store

def _slug(config: TLIConfig) -> str:
    layers = "+".join(str(k) for k in config.target_layers)
    model = re.sub(r"[^A-Za-z0-9]+", "-", Path(config.model.model).name)[:24].strip("-") or "model"
    return f"{model}-L{layers}-r{config.lora_r}"


def create_run(config: TLIConfig, runs_dir: str | Path | None = None, trained: pd.DataFrame | None = None,
               control: pd.DataFrame | None = None, name: str | None = None) -> Run:
    """Make a queued run directory holding the config and copies of the pairs it will use."""
    runs_dir = Path(runs_dir or default_runs_dir())
    trained = load_pairs(config.trained_pairs) if trained is None else trained
    control = load_pairs(config.control_pairs) if control is None else control
    base = name or f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(config)}"
    path = runs_dir / base
    i = 1
    while path.exists():
        i += 1
        path = runs_dir / f"{base}-{i}"
    tmp = runs_dir / f".{path.name}.creating"
    tmp.mkdir(parents=True)
    write_json(tmp / "config.json", config.to_dict())
    write_csv(tmp / "pairs_trained.csv", trained)
    write_csv(tmp / "pairs_control.csv", control)
    write_json(tmp / "status.json", {"state": "queued", "phase": "queued", "created": now(), "updated": now(),
                                     "host": socket.gethostname(), "step": 0, "total_steps": None})
    os.replace(tmp, path)
    return Run(path)


def list_runs(runs_dir: str | Path | None = None) -> list[Run]:
    runs_dir = Path(runs_dir or default_runs_dir())
    if not runs_dir.is_dir():
        return []
    out = []
    for d in sorted(runs_dir.iterdir(), reverse=True):
        if d.is_dir() and not d.name.startswith(".") and (d / "config.json").is_file():
            out.append(Run(d))
    return out


def load_run(path_or_id: str | Path, runs_dir: str | Path | None = None) -> Run:
    path = Path(path_or_id)
    if not (path / "config.json").is_file():
        path = Path(runs_dir or default_runs_dir()) / str(path_or_id)
    if not path.is_dir():
        raise TLIError(f"no run {path_or_id!r} (looked in {path.parent})")
    return Run(path)


def delete_run(run: Run) -> None:
    if run.is_active():
        raise TLIError(f"run {run.id} is still {run.status()['state']}; stop it before deleting")
    if run.is_evaluating():
        raise TLIError(f"run {run.id} is being evaluated; wait for the evaluation to end before deleting")
    trash = run.path.with_name(f".{run.id}.deleting")
    os.replace(run.path, trash)  # disappears from listings at once
    shutil.rmtree(trash, ignore_errors=True)


def active_runs(runs_dir: str | Path | None = None) -> list[Run]:
    return [r for r in list_runs(runs_dir) if r.is_active()]


def headline(run: Run) -> dict:
    """One row for the runs table: status, key settings, headline results."""
    st, cfg, summ = run.status(), run.config_dict(), run.summary() or {}
    groups = summ.get("groups", {})
    row = {
        "run": run.id, "state": st.get("state"), "phase": st.get("phase"),
        "step": f"{st.get('step', 0)}/{st.get('total_steps') or '?'}",
        "created": st.get("created"), "model": cfg.get("model", {}).get("model"),
        "quant": cfg.get("model", {}).get("quantization"),
        "target layers": ",".join(map(str, cfg.get("target_layers", []))),
        "eval layer": summ.get("eval_layer", cfg.get("eval_layer")), "rank": cfg.get("lora_r"),
        "blocks": cfg.get("adapter_blocks"), "epochs": cfg.get("epochs"), "loss": cfg.get("loss"),
    }
    for g in ("trained", "control"):
        s = groups.get(g) or {}
        row[f"{g} before"] = s.get("mean_before")
        row[f"{g} after"] = s.get("mean_after")
        row[f"{g} % change"] = s.get("pct_change")
        row[f"{g} p"] = s.get("p")
    row["message"] = st.get("message", "")
    return row


def runs_table(runs_dir: str | Path | None = None) -> pd.DataFrame:
    return pd.DataFrame([headline(r) for r in list_runs(runs_dir)])


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def diff_configs(a: Run, b: Run, only_different: bool = True) -> pd.DataFrame:
    """Setting-by-setting comparison of two runs' configs."""
    fa, fb = _flatten(a.config_dict()), _flatten(b.config_dict())
    rows = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key), fb.get(key)
        if not only_different or va != vb:
            rows.append({"setting": key, a.id: json.dumps(va), b.id: json.dumps(vb)})
    return pd.DataFrame(rows, columns=["setting", a.id, b.id])
