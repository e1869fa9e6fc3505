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

A run whose worker process died (crash, SIGKILL, reboot, a full disk) reads as failed, never
as running forever, and reading it writes nothing (``jobs.jobdir``); one job at a time per runs
directory (``jobs.process.JobLock``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket
import tempfile
import time
import zipfile
from pathlib import Path

import pandas as pd

from .config import TLIConfig
from .errors import TLIError
from .evidence import run_verdict
from .files import publish_dir, read_csv, read_json_checked, write_csv, write_json
from .jobs.jobdir import JobDir
from .jobs.process import PROJECT_ROOT, now, process_alive, read_tag
from .pairs import load_pairs, pairs_hash
from .schema import (
    METRIC,
    METRIC_REQUIRED,
    downstream_problem,
    record_problem,
    run_status_problem,
    summary_problem,
    table_problem,
    unreadable,
)

STATES = ("queued", "running", "done", "failed", "stopped", "imported")
SIDE_JOB_PID = {"evaluation": "evaluate.pid", "downstream": "downstream.pid"}


def default_runs_dir() -> Path:
    return Path(os.environ.get("TLI_RUNS_DIR", PROJECT_ROOT / "runs")).expanduser()


def _remove_stale_temporaries(folder: Path) -> None:
    """Half-written checkpoints (``.NAME.tmpPID``) of processes that are gone: a ``kill -9`` mid-save cannot
    clean up after itself, so the next save does."""
    for tmp in folder.glob(".*.tmp*"):
        pid = tmp.name.rpartition(".tmp")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError:  # alive but not ours (EPERM): leave it
            pass


def remove_stale_temporaries(runs_dir: str | Path) -> None:
    """Every run's half-written checkpoints whose writer is gone (a run killed mid-save is never saved to again);
    called by a job that holds the runs directory's JobLock, when it starts."""
    for folder in [*Path(runs_dir).glob("*/checkpoints"), *Path(runs_dir).glob("*")]:
        if folder.is_dir() and not folder.is_symlink():
            _remove_stale_temporaries(folder)


class Run(JobDir):
    """One run directory."""

    kind = "run"

    def status_problem(self, status: dict) -> str | None:
        return run_status_problem(status)

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
        """The run's settings; TLIError (saying which file and why) if config.json cannot be used."""
        data, problem = read_json_checked(self.path / "config.json", None, dict)
        if problem:
            raise TLIError(f"run {self.id} is unreadable: {problem}")
        try:
            return TLIConfig.from_dict(data)
        except TLIError as exc:
            raise TLIError(f"run {self.id} is unreadable: config.json: {exc}") from None

    def config_dict(self) -> dict:
        return read_json_checked(self.path / "config.json", {}, dict)[0]

    def meta(self) -> dict:
        """What the user wrote about the run: a display name and notes (meta.json; {} if none or unreadable)."""
        return read_json_checked(self.path / "meta.json", {}, dict)[0]

    def set_meta(self, **changes) -> dict:
        meta = dict(self.meta(), **changes)
        try:
            write_json(self.path / "meta.json", meta)
        except OSError as exc:
            raise TLIError(f"could not save the run's notes in {self.path}: {exc.strerror or exc}") from None
        return meta

    def model_spec(self):
        """The run's model (None when its config cannot be read): for filtering runs by model."""
        try:
            return self.config().model
        except TLIError:
            return None

    def problems(self) -> list[str]:
        """Why the run's files cannot be read ('file: reason' each); [] for a healthy run."""
        out = [read_json_checked(self.path / "config.json", None, dict)[1]]
        if not out[0]:
            try:
                TLIConfig.from_dict(self.config_dict())
            except TLIError as exc:
                out[0] = f"config.json: {exc}"
        status = self.raw_status()
        if status.get("state") == "unreadable":
            out.append(str(status.get("message")).removeprefix("unreadable: "))
        out.append(self._summary()[1])
        return [p for p in out if p]

    def _side_record(self, name: str) -> dict:
        job = self.raw_status().get(name)
        return job if isinstance(job, dict) else {}

    def side_job(self, name: str) -> dict:
        """The latest job of kind ``name`` on the run's saved weights ({} if none): running, done or failed.

        ``evaluation`` re-evaluates the adapter, ``downstream`` runs benchmarks. A launched job counts
        as running from its first instant (its tag is in ``<name>.pid`` before it writes anything); a
        dead one that never finished is failed.
        """
        job = self._side_record(name)
        launched = read_tag(self.path / SIDE_JOB_PID[name])
        if launched and launched != job.get("process") and process_alive(launched):
            return {"state": "running", "phase": "starting", "process": launched}
        if job.get("state") == "running" and not process_alive(job.get("process")):
            job = self._side_record(name)  # it may have finished between our two reads
        if job.get("state") == "running" and not process_alive(job.get("process")):  # derived, never written
            job = dict(job, state="failed",
                       message=f"the {name} process (pid {str(job.get('process')).split(':')[0]}) ended "
                               f"without finishing (killed or crashed); see train.log" + self.full_disk_note())
        return job

    def evaluation(self) -> dict:
        return self.side_job("evaluation")

    def downstream(self) -> dict:
        return self.side_job("downstream")

    def downstream_summary(self) -> dict | None:
        """The latest downstream benchmarks (downstream/summary.json), or None before any; TLIError
        ('unreadable: downstream/summary.json: ...') when the file cannot be used."""
        data, problem = read_json_checked(self.path / "downstream" / "summary.json", None)
        problem = problem or (downstream_problem(data) if data is not None else None)
        if problem:
            raise unreadable("downstream/summary.json", problem.removeprefix("summary.json: "))
        return data

    def is_evaluating(self) -> bool:
        return self.evaluation().get("state") == "running"

    def append_metric(self, row: dict) -> None:
        # One write() of one line: a reader (or a SIGKILL) never sees half a line.
        line = (json.dumps(row, default=float) + "\n").encode()
        try:
            fd = os.open(self.path / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            raise TLIError(f"could not write {self.path / 'metrics.jsonl'}: {exc.strerror or exc}") from None

    def metrics(self) -> pd.DataFrame:
        """One row per training step (empty before the first); TLIError ('unreadable: metrics.jsonl: ...') when a
        line is not UTF-8 or holds a value of the wrong kind. A line that is not JSON at all is skipped."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return pd.DataFrame()
        rows = []
        try:
            lines = path.read_bytes().decode("utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise unreadable("metrics.jsonl", f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                                              f"{exc.start})") from None
        except OSError as exc:
            raise unreadable("metrics.jsonl", exc.strerror or str(exc)) from None
        for i, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                continue
            problem = record_problem(row, METRIC, METRIC_REQUIRED, f"line {i}")
            if problem:
                raise unreadable("metrics.jsonl", problem)
            rows.append(row)
        return pd.DataFrame(rows)

    def log(self, message: str) -> None:
        try:
            with open(self.log_path, "a") as fh:
                fh.write(f"{now()} {message}\n")
        except OSError:  # a full disk must not turn a clear failure into a traceback; status.json says it
            pass

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def summary(self, protocol: str | None = None) -> dict | None:
        """The run-level summary (its headline protocol's numbers, and every protocol under ``protocols``),
        or one protocol's summary."""
        summary = self._summary()[0]
        if protocol is None or summary is None:
            return summary
        return (summary.get("protocols") or {}).get(protocol)

    def _summary(self) -> tuple[dict | None, str | None]:
        summary, problem = read_json_checked(self.path / "summary.json", None, dict)
        if summary is None:
            return None, problem
        problem = summary_problem(summary)
        if problem:
            return None, f"summary.json: {problem}"
        return summary, None

    def protocols(self) -> list[str]:
        """The evaluation protocols this run has results for, the headline first ([] before evaluation).

        A run evaluated before protocols existed has one, called ``legacy``.
        """
        summary = self.summary() or {}
        if summary.get("protocols"):
            return list(summary["protocols"])
        return ["legacy"] if summary.get("groups") else []

    def table(self, name: str, protocol: str | None = None) -> pd.DataFrame | None:
        """One of the evaluation tables (pairs, pairs_layers, curve, layer_stats, retrieval) of a protocol (default:
        headline); None if it is missing; TLIError ('unreadable: eval/...: reason') if it cannot be used."""
        path = self._table_path(name, protocol)
        if not path.is_file():
            return None
        where = str(path.relative_to(self.path))
        try:
            df = read_csv(path)
        except UnicodeDecodeError as exc:
            raise unreadable(where, f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") \
                from None
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as exc:
            raise unreadable(where, str(exc).strip().splitlines()[0] if str(exc).strip() else "empty file") from None
        problem = table_problem(name, df)
        if problem:
            raise unreadable(where, problem)
        return df

    def require_table(self, name: str, protocol: str | None = None) -> pd.DataFrame:
        """:meth:`table` for a view that cannot do without it: a missing table is unreadable too."""
        df = self.table(name, protocol)
        if df is None:
            raise unreadable(str(self._table_path(name, protocol).relative_to(self.path)),
                             "missing (the run's evaluation tables are gone; evaluate it again)")
        return df

    def _table_path(self, name: str, protocol: str | None) -> Path:
        protocol = protocol or (self.protocols() or [None])[0]
        folder = self.eval_dir if protocol in (None, "legacy") else self.eval_dir / protocol
        return folder / f"{name}.csv"

    def pairs(self, which: str) -> pd.DataFrame:
        return load_pairs(self.path / f"pairs_{which}.csv")

    def checkpoints(self) -> list[Path]:
        d = self.path / "checkpoints"
        if not d.is_dir():
            return []
        return sorted(d.glob("epoch_*"), key=lambda p: int(p.name.split("_")[1]))

    def has_adapter(self) -> bool:
        return (self.adapter_dir / "adapter_config.json").is_file()

    @property
    def full_ft_dir(self) -> Path:
        return self.path / "full_ft"

    def has_full_ft(self) -> bool:
        return (self.full_ft_dir / "blocks.safetensors").is_file()

    def has_weights(self) -> bool:
        """Trained weights to evaluate or look through: a LoRA adapter, or fully fine-tuned blocks."""
        return self.has_adapter() or self.has_full_ft()

    def weights(self) -> list[str]:
        """The trained weights saved inside the run, by name: the final ones ('adapter' for LoRA, 'full_ft' for
        fully fine-tuned blocks) and each epoch's ('checkpoints/epoch_N')."""
        names = (["adapter"] if self.has_adapter() else []) + (["full_ft"] if self.has_full_ft() else [])
        return names + [f"checkpoints/{p.name}" for p in self.checkpoints()
                        if (p / "adapter_config.json").is_file() or (p / "blocks.safetensors").is_file()]

    def weights_path(self, name: str | None = None) -> Path:
        """The directory of one of the run's own trained weights; nothing outside the run is ever named here."""
        available = self.weights()
        name = (available[0] if available else "adapter") if name in (None, "", "adapter/", "full_ft/") \
            else str(name).strip().rstrip("/")
        if name not in available:
            raise TLIError(f"run {self.id} has no trained weights {name!r}; it has: {', '.join(available) or 'none'}"
                           + (" (an adapter from elsewhere comes in with `import-adapter`)" if available else ""))
        return self.path / name

    def save_adapter(self, peft_model, target: Path) -> None:
        """A PEFT adapter (``save_pretrained``) saved all or nothing (see :meth:`save_weights`)."""
        self.save_weights(peft_model.save_pretrained, target)

    def save_weights(self, write, target: Path) -> None:
        """``write(directory)`` into a temporary directory, then rename: never half a checkpoint, and on any
        failure (a full disk, an interrupted save) no temporary left behind and the previous one intact."""
        tmp = target.parent / f".{target.name}.tmp{os.getpid()}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_temporaries(target.parent)
            shutil.rmtree(tmp, ignore_errors=True)
            write(tmp)
            publish_dir(tmp, target)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, Exception):  # OSError, safetensors' own error type, ...: a user's disk, not a bug
                reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise TLIError(f"could not save the trained weights to {target}: {reason}") from None
            raise

    def final_weights(self) -> Path | None:
        """The run's final trained weights: its LoRA adapter or its fully fine-tuned blocks (None before saving)."""
        return self.adapter_dir if self.has_adapter() else self.full_ft_dir if self.has_full_ft() else None

    def weights_zip(self) -> bytes:
        """The final trained weights (adapter or fine-tuned blocks) and the config as a zip, for download."""
        final = self.final_weights()
        if final is None:
            raise TLIError(f"run {self.id} has no saved weights")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(final.rglob("*")):
                if f.is_file():
                    zf.write(f, f"{self.id}/{final.name}/{f.relative_to(final)}")
            zf.write(self.path / "config.json", f"{self.id}/config.json")
        return buf.getvalue()


# --------------------------------------------------------------------------- the store

def _slug(config: TLIConfig) -> str:
    layers = "+".join(str(k) for k in config.target_layers)
    model = re.sub(r"[^A-Za-z0-9]+", "-", Path(config.model.model).name)[:24].strip("-") or "model"
    return f"{model}-L{layers}-" + ("full" if config.method == "full" else f"r{config.lora_r}")


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_run_name(name: str, what: str = "run name") -> str:
    """A name that stays inside the runs directory: letters, digits, '.', '_', '-'; no separators, no '..'."""
    name = str(name).strip()
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        raise TLIError(f"{what} {name!r} is not allowed: use 1-100 letters, digits, '.', '_' or '-', starting with a "
                       f"letter or digit (no '/', no '..')")
    return name


def create_run(config: TLIConfig, runs_dir: str | Path | None = None, trained: pd.DataFrame | None = None,
               control: pd.DataFrame | None = None, name: str | None = None, status: dict | None = None,
               adapter_from: str | Path | None = None, slug: str | None = None,
               pair_names: dict[str, str] | None = None) -> Run:
    """Make a run directory (queued, unless ``status`` says otherwise) holding the config and copies of the pairs
    it will use (and, for an imported run, its adapter). All or nothing: on any error, nothing is left behind."""
    runs_dir = Path(runs_dir or default_runs_dir())
    base = check_run_name(name) if name else f"{time.strftime('%Y%m%d-%H%M%S')}-{slug or _slug(config)}"
    trained = load_pairs(config.trained_pairs) if trained is None else trained
    control = load_pairs(config.control_pairs) if control is None else control
    tmp = None
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{base}.creating-", dir=runs_dir))  # a crash never blocks the name
        write_json(tmp / "config.json", config.to_dict())
        write_csv(tmp / "pairs_trained.csv", trained)
        write_csv(tmp / "pairs_control.csv", control)
        if adapter_from is not None:
            (tmp / "adapter").mkdir()
            for f in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copyfile(Path(adapter_from) / f, tmp / "adapter" / f)
        sets = {role: {"name": (pair_names or {}).get(role) or Path(path).name, "hash": pairs_hash(df),
                       "rows": len(df)}
                for role, df, path in (("trained", trained, config.trained_pairs),
                                       ("control", control, config.control_pairs))}
        write_json(tmp / "status.json", {"state": "queued", "phase": "queued", "created": now(), "updated": now(),
                                         "created_ns": time.time_ns(), "pairs": sets,
                                         "host": socket.gethostname(), "step": 0, "total_steps": None,
                                         **(status or {})})
        path, i = runs_dir / base, 1
        while True:
            try:
                os.rename(tmp, path)  # fails if the name is taken, even by a run created a moment ago
                break
            except OSError:
                if not path.exists():
                    raise
                if name:
                    raise TLIError(f"a run named {base!r} exists already in {runs_dir}; choose another name") \
                        from None
                i += 1
                path = runs_dir / f"{base}-{i}"
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise TLIError(f"cannot create run {base} in {runs_dir}: {exc.strerror or exc}") from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
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


def load_run(run_id: str | Path, runs_dir: str | Path | None = None) -> Run:
    """The run called ``run_id`` inside the runs directory -- the only way a command names a run.

    A run id is a plain name; a path is accepted only when it points at a run directly inside
    the runs directory (``runs/<id>``), so no command can read, write or delete anything else.
    """
    runs_dir = Path(runs_dir or default_runs_dir())
    return Run(job_path(run_id, runs_dir, "run", "config.json", id_hint=" (as `runs` lists it)",
                        missing_hint=" (`python -m tli_core runs` lists them)"))


def job_path(job_id: str | Path, root: Path, kind: str, marker: str, id_hint: str = "",
             missing_hint: str = "") -> Path:
    """The directory of the ``kind`` (run, sweep) called ``job_id`` directly inside ``root``, holding ``marker``.

    A plain id, or a path only when it points directly inside ``root``: nothing else is ever read, written
    or deleted through an id a user typed."""
    text = str(job_id).strip()
    given = Path(text)
    if given.is_absolute() or len(given.parts) > 1:
        if given.resolve().parent != root.resolve():
            raise TLIError(f"{text!r} is not a {kind} in {root}: give the {kind}'s id{id_hint}, and --runs-dir for "
                           f"another runs directory")
        text = given.name
    check_run_name(text, f"{kind} id")
    if not (root / text / marker).is_file():
        raise TLIError(f"no {kind} {text!r} in {root}{missing_hint}")
    return root / text


def delete_run(run: Run) -> None:
    if run.path.is_symlink():  # only the link would go (and rmtree refuses links): say so instead of "deleted"
        raise TLIError(f"run {run.id} is a symbolic link to {os.path.realpath(run.path)}; TLI Studio deletes only "
                       f"runs stored in the runs directory. Remove the link itself with: rm {run.path}")
    if run.is_active():
        raise TLIError(f"run {run.id} is still {run.status()['state']}; stop it before deleting")
    if run.is_evaluating():
        raise TLIError(f"run {run.id} is being evaluated; wait for the evaluation to end before deleting")
    trash = run.path.with_name(f".{run.id}.deleting")
    os.replace(run.path, trash)  # disappears from listings at once
    shutil.rmtree(trash, ignore_errors=True)


def started_at(run: Run) -> tuple:
    """When the run was created (its directory name is no clock: a user may call a run anything)."""
    st = run.raw_status()
    return str(st.get("created") or st.get("started") or ""), int(st.get("created_ns") or 0)


def newest(runs: list[Run], states: tuple[str, ...] | None = None) -> Run | None:
    """The most recently created run (in one of ``states``, if given)."""
    pool = [r for r in runs if states is None or r.status().get("state") in states]
    return max(pool, key=started_at) if pool else None


def active_runs(runs_dir: str | Path | None = None) -> list[Run]:
    return [r for r in list_runs(runs_dir) if r.is_active()]


def headline(run: Run) -> dict:
    """One row for the runs table, what matters first: name, pairs, where, rank, protocol, changes, p, state.

    Never raises: a run whose files cannot be read is listed as unreadable, saying which file and why.
    """
    problems = run.problems()
    st, cfg, summ = run.status(), run.config_dict(), run.summary() or {}
    if problems:
        st = dict(st, state="unreadable", message="unreadable: " + "; ".join(problems))
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    groups = summ.get("groups", {})
    sets = st.get("pairs") if isinstance(st.get("pairs"), dict) else {}
    layers = cfg.get("target_layers")
    row = {"run": run.id, "name": run.meta().get("name") or ""}
    for g in ("control", "trained"):  # the claim is about unseen words: control first; specific before raw
        grp = groups.get(g) if isinstance(groups.get(g), dict) else {}
        spec = grp.get("specific") if isinstance(grp.get("specific"), dict) else {}
        hit = ((grp.get("retrieval") or {}).get("hit1_csls") or {}) if isinstance(grp.get("retrieval"), dict) else {}
        if g == "control":
            row["control verdict"] = run_verdict(grp).text if grp else None
        row[f"{g} specific Δ"] = spec.get("change")
        row[f"{g} specific p (Holm)"] = spec.get("p_holm")
        row[f"{g} hit@1 CSLS Δ"] = hit.get("change")
        row[f"{g} raw Δ"] = grp.get("change")
        row[f"{g} shuffled Δ"] = (grp["shuffled_mean_after"] - grp["shuffled_mean_before"]
                                  if "shuffled_mean_after" in grp else None)
        row[f"{g} raw p"] = grp.get("p")
    row["protocol"] = summ.get("headline") or ("legacy" if groups else None)
    row["state"] = st.get("state")
    row["pairs"] = " / ".join(f"{v.get('name', '?')} · {str(v.get('hash', ''))[:8]}" for v in sets.values()
                              if isinstance(v, dict))
    row["target layers"] = ",".join(map(str, layers)) if isinstance(layers, list) else layers
    row["method"] = "full FT" if cfg.get("method") == "full" else "LoRA"
    row["rank"] = None if cfg.get("method") == "full" else cfg.get("lora_r")
    row["placebo"] = cfg.get("pairing") == "deranged"
    row["seed"] = cfg.get("seed")
    sweep = st.get("sweep") if isinstance(st.get("sweep"), dict) else {}
    row["sweep"] = f"{sweep.get('id')} · cell {sweep.get('cell')}" if sweep else ""
    # the rest, off to the right
    row["eval layer"] = summ.get("eval_layer")
    for g in ("trained", "control"):
        row[f"{g} % change"] = (groups.get(g) or {}).get("pct_change")
    row.update({"phase": st.get("phase"),
                "step": f"{st.get('step', 0)}/{st.get('total_steps') or '?'}", "created": st.get("created"),
                "model": model.get("model"), "quant": model.get("quantization"), "blocks": cfg.get("adapter_blocks"),
                "epochs": cfg.get("epochs"), "loss": cfg.get("loss")})
    for g in ("trained", "control"):
        s = groups.get(g) or {}
        row[f"{g} before"] = s.get("mean_before")
        row[f"{g} after"] = s.get("mean_after")
    row["notes"] = run.meta().get("notes") or ""
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


_RESOLVED = ("eval_layer", "adapter_blocks", "target_modules", "target_layers")  # symbolic in config.json


_UNSET_READS = {"trained_subset": "all", "control_subset": "all"}  # what an unset setting means


def _shown_value(key: str, value) -> str:
    """A setting as the diff table shows it: JSON, but an unset one reads as what it means ("all") or "—", never
    "null" or "None"."""
    unset = _UNSET_READS.get(key, "—")
    if value is None:
        return unset
    if isinstance(value, str):
        return value.replace("null → ", f"{unset} → ")
    return json.dumps(value)


def _settings(run: Run) -> tuple[dict, dict, dict]:
    """A run's settings as it acted, flattened: (values to compare, values to show, symbolic settings it resolved).
    Settings its config.json lacks (written by an older version) take their default; symbolic ones ("paper", "all",
    none = the model's) their resolved value where the run recorded it; the pair sets are compared by content."""
    shown = _flatten(TLIConfig().to_dict()) | _flatten(run.config_dict())
    raw = {key: json.dumps(shown.get(key)) for key in _RESOLVED}
    compared = {k: json.dumps(v) for k, v in shown.items()}
    status = run.status()
    resolved = status.get("resolved") if isinstance(status.get("resolved"), dict) else {}
    done = {}
    for key in _RESOLVED:
        if resolved.get(key) is not None:
            compared[key] = done[key] = json.dumps(resolved[key])
            if compared[key] != raw[key]:
                shown[key] = f"{raw[key]} → {compared[key]}"
    sets = status.get("pairs") if isinstance(status.get("pairs"), dict) else {}
    for role, meta in sets.items():
        if isinstance(meta, dict) and meta.get("hash") and f"{role}_pairs" in shown:
            compared[f"{role}_pairs"] = str(meta["hash"])
            shown[f"{role}_pairs"] = f"{meta.get('name', '?')} · {str(meta['hash'])[:8]}"
    shown = {k: _shown_value(k, v) for k, v in shown.items()}
    return compared, shown, {"model": json.dumps(run.config_dict().get("model")), "raw": raw, "done": done}


def diff_configs(*runs: Run, only_different: bool = True) -> pd.DataFrame:
    """Setting-by-setting comparison of several runs' configs (one column per run). "Different" means acting
    differently: the same pairs under two file names, a layer given by name and by number, a default and its
    explicit value are the same. A run that has not started yet resolves "paper" or "all" as another run of the
    same model did."""
    settings = [_settings(r) for r in runs]
    known = {(m["model"], key, m["raw"][key]): value for _, _, m in settings for key, value in m["done"].items()}
    for compared, _, m in settings:
        for key in _RESOLVED:
            if key not in m["done"]:
                compared[key] = known.get((m["model"], key, m["raw"][key]), compared.get(key))
    rows = []
    for key in sorted(set().union(*(c for c, _, _ in settings))):
        values = [c.get(key, "null") for c, _, _ in settings]
        if not only_different or len(set(values)) > 1:
            rows.append({"setting": key, **{r.id: s.get(key, "") for r, (_, s, _) in zip(runs, settings,
                                                                                             strict=True)}})
    return pd.DataFrame(rows, columns=["setting"] + [r.id for r in runs])


def _curve(run: Run) -> pd.DataFrame | None:
    try:
        return run.table("curve")
    except TLIError:  # one run's damaged table: the others are still drawn
        return None


def results_side_by_side(runs: list[Run]) -> pd.DataFrame:
    """One row per (run, set) of each run's headline results, with how they were measured; a run without results
    is listed too, as not evaluated, so every run picked is on the table."""
    rows = []
    for run in runs:
        summary = run.summary() or {}
        groups = summary.get("groups") or {}
        if not groups:
            rows.append({"run": run.id, "name": run.meta().get("name") or "", "set": "—",
                         "verdict": f"not evaluated ({run.status().get('state') or 'unknown'})"})
        for group, g in groups.items():
            rows.append({"run": run.id, "name": run.meta().get("name") or "", "set": group,
                         "protocol": summary.get("headline") or "legacy", "layer": summary.get("eval_layer"),
                         "pooling": summary.get("pooling"), "precision": summary.get("precision"), "n": g.get("n"),
                         "verdict": run_verdict(g).text,
                         "specific Δ": (g.get("specific") or {}).get("change"),
                         "specific p (Holm)": (g.get("specific") or {}).get("p_holm"),
                         "hit@1 CSLS Δ": (((g.get("retrieval") or {}).get("hit1_csls")) or {}).get("change"),
                         "mean before": g.get("mean_before"), "mean after": g.get("mean_after"),
                         "raw Δ": g.get("change"), "% change": g.get("pct_change"), "p (paired t)": g.get("p"),
                         "gap before": g.get("gap_before"), "gap after": g.get("gap_after"),
                         "P@1 CSLS before": g.get("p1_csls_before"), "P@1 CSLS after": g.get("p1_csls_after")})
    return pd.DataFrame(rows)


def curves_side_by_side(runs: list[Run]) -> pd.DataFrame:
    """Each run's before/after layer curve (headline protocol) in one long table with a ``run`` column."""
    frames = [c.assign(run=r.id) for r in runs if (c := _curve(r)) is not None]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
