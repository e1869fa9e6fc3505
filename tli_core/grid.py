"""Running a sweep's units on Ray: a local runtime by default, an existing cluster by address.

Every unit (a cell's settings x seed x arm, see ``sweeps.py``) is one Ray task that runs the same
worker code as a single run -- ``worker.execute`` (training, every evaluation protocol) and, when the
sweep asks, ``worker.downstream_run`` (lm-eval benchmarks) -- so nothing of the method is written
twice. Ray Core tasks rather than Tune trials: a unit is a fixed configuration with no search
algorithm, early stopping or checkpoint-restore of its own to drive, and Ray Core's per-task
resources, retries on a dead worker and cancellation are exactly what a grid of runs needs; the
results are the run directories, which Tune's experiment store would duplicate.

Resources per unit (``plan``): one GPU where there are GPUs (``gpus_per_cell`` a fraction or several,
e.g. 2 for a model sharded with accelerate), else ``threads_per_cell`` CPU threads -- fixed when the
sweep is created, so the numbers do not depend on how many units run at once -- and Ray's ``memory``
resource from the model's measured footprint, so units never oversubscribe memory.

Where results land: in the run directories of the driver's runs directory either way. When a
worker node sees that directory (a shared filesystem: the local machine, or NFS on a cluster) the
unit writes there directly and the dashboard follows it live. When it does not, the unit runs in a
temporary directory on its node, its status is relayed to the driver every few seconds through a
small Ray actor, and the finished run directory is shipped back as a zip and unpacked in place.

Faults: a unit whose process dies (kill -9, out of memory) is retried (``retries``, default once)
from a clean run directory, then recorded as failed with Ray's reason while the others go on.
Finished units are never rerun; a driver that dies leaves the sweep 'interrupted', and ``resume``
runs only the missing units. Stop cancels queued units and asks running ones to stop (their
STOP file: each saves what it has within seconds); any still running after a grace period is
cancelled by force.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import TLIError
from .files import publish_dir, read_json_checked, write_json
from .jobs.process import PROJECT_ROOT, JobLock, my_process_tag, now, process_alive, process_tag
from .models import model_shape
from .pairs import load_pairs
from .runs import Run, create_run, list_runs
from .sweeps import Sweep, unit_label
from .util import cpu_count, default_threads

STOP_GRACE = 20.0  # seconds a running unit gets to stop by itself before it is cancelled by force
POLL = 0.5  # seconds between two looks of the driver at Ray and at the STOP file
FINAL = ("done", "invalid")  # a unit in one of these states is never run again
SHIP_ENV = "TLI_RAY_SHIP"  # "1": units run in a temporary directory and ship their run back (tests, clusters)
DEFAULT_FOOTPRINT = 1 << 30  # bytes assumed for a model no run has measured yet (replaced by a measurement)


# --------------------------------------------------------------------------- resources

@dataclass
class Plan:
    """How units are placed: how many at a time, and what each one asks Ray for."""

    slots: int  # units at a time
    threads: int  # CPU threads of one unit (torch.set_num_threads)
    cpus: float  # Ray num_cpus of one unit
    gpus: float  # Ray num_gpus of one unit
    memory: int  # Ray memory (bytes) of one unit
    footprint: int  # the model's memory footprint the memory comes from
    footprint_basis: str
    why: str

    def to_dict(self) -> dict:
        return asdict(self)


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def measured_footprint(runs_dir: Path, spec) -> tuple[int, str]:
    """The model's memory footprint as a finished run of it measured it here (model_facts.json), else an
    estimate from its config, else 1 GiB; with where the number came from."""
    for run in list_runs(runs_dir):
        if run.model_spec() != spec:
            continue
        facts, _ = read_json_checked(run.path / "model_facts.json", None, dict)
        if facts and isinstance(facts.get("memory_bytes"), int) and facts["memory_bytes"] > 0:
            return facts["memory_bytes"], f"measured by run {run.id}"
    try:
        shape = model_shape(spec)
        if shape.linears:
            params = sum(i * o for i, o in shape.linears.values())
            bits = {"nf4": 4.5, "fp4": 4.5, "int8": 8, "bf16": 16, "fp32": 32}.get(spec.quantization, 16)
            return int(params * bits / 8) + (256 << 20), "estimated from the model's config (no run measured it yet)"
    except TLIError:
        pass
    return DEFAULT_FOOTPRINT, "assumed (1 GiB): no run measured this model yet"


def unit_memory(footprint: int, spec) -> int:
    """Memory one unit may use: the model, a second copy for a protocol that reloads the base (FP4) or merges,
    training's activations and AdamW states, and the interpreter with torch (~1 GiB). Measured peak RSS of a
    demo unit (NF4, 1 epoch, all protocols) on the 2-core AMD machine: 1.9 GiB for a 0.1 GiB model."""
    protocols = set(spec.base.protocols)
    copies = 2 if {"paper-code-fp4"} & protocols else 1
    return int(footprint * (copies + 1.5)) + (1 << 30)


def plan(sweep: Sweep, n_units: int, parallel: int | None = None, cluster: dict | None = None) -> Plan:
    """Units at a time and each unit's resources, for this machine (``cluster``: Ray's cluster_resources())."""
    return plan_for(sweep.spec(), sweep.runs_dir, n_units, parallel, cluster)


def estimate_grid(spec, runs_dir: Path, n_trained: int, n_control: int, parallel: int | None = None,
                  num_layers: int | None = None) -> tuple[float | None, Plan, str]:
    """Before a sweep starts: (seconds it should take on this machine, its plan, what the figure rests on): each
    unit's duration from this model's earlier runs here (``estimate.estimate_run``), laid out on the slots."""
    from .estimate import estimate_run

    units = spec.units()
    p = plan_for(spec, runs_dir, len(units), parallel)
    durations = []
    for u in units:
        est = estimate_run(spec.config_for(u), n_trained, n_control, runs_dir, num_layers)
        if est is None:
            return None, p, "no finished run of this model on this machine to estimate from yet"
        durations.append(est.total)
    return remaining_seconds(durations, p.slots), p, est.basis


def plan_for(spec, runs_dir: Path, n_units: int, parallel: int | None = None, cluster: dict | None = None) -> Plan:
    """:func:`plan` for a sweep that may not exist yet (its description and runs directory)."""
    footprint, basis = measured_footprint(runs_dir, spec.base.model)
    memory = unit_memory(footprint, spec)
    device = spec.base.model.device
    if cluster is not None:
        cores, gpus, mem = int(cluster.get("CPU", 1)), float(cluster.get("GPU", 0)), int(cluster.get("memory", 0))
    else:
        cores, mem = cpu_count(), available_memory()
        gpus = 0.0
        if device != "cpu":
            try:
                import torch

                gpus = float(torch.cuda.device_count())
            except ImportError:
                gpus = 0.0
    limits = []
    if gpus and device != "cpu":
        per = float(spec.gpus_per_cell or 1)
        slots = int(gpus // per) if per >= 1 else int(gpus / per)
        limits.append(f"{gpus:g} GPU(s), {per:g} per unit")
        threads = max(1, cores // max(1, slots))
        cpus = float(threads)
    else:
        per = 0.0
        threads = int(spec.threads_per_cell or default_threads(n_units, cores))
        slots = max(1, cores // threads)
        limits.append(f"{cores} cores, {threads} thread(s) per unit")
        cpus = float(threads)
    if cluster is not None and cluster.get("max_node_CPU"):  # a unit runs on one node: it must fit the largest
        node_cpus = max(1, int(cluster["max_node_CPU"]))
        if threads > node_cpus:
            limits.append(f"{threads} thread(s) per unit capped to the largest node's {node_cpus} CPU(s)")
            threads = node_cpus
        cpus = float(min(cpus, node_cpus))
        if cluster.get("max_node_memory"):
            memory = min(memory, int(cluster["max_node_memory"]))
    if mem:
        by_memory = max(1, mem // memory)
        if by_memory < slots:
            limits.append(f"memory: {mem / 2**30:.1f} GiB for {memory / 2**30:.1f} GiB per unit")
        slots = min(slots, by_memory)
        memory = min(memory, mem)
    if parallel:
        slots = min(slots, int(parallel))
        limits.append(f"--parallel {parallel}")
    slots = max(1, min(slots, max(1, n_units)))
    return Plan(slots=slots, threads=threads, cpus=cpus, gpus=per, memory=int(memory), footprint=footprint,
                footprint_basis=basis, why="; ".join(limits))


# --------------------------------------------------------------------------- one unit, inside a Ray worker

_MODELS: dict = {}  # per worker process: the model loaded by its last unit (reused when the next one needs it)


def _model(spec, progress=None):
    from .models import load_model
    from .progress import no_progress

    if spec not in _MODELS:
        _MODELS.clear()  # one model per worker process: a unit of another model frees the last one first
        import gc

        gc.collect()
        _MODELS[spec] = load_model(spec, progress=progress or no_progress)
    return _MODELS[spec]


RESET = ("metrics.jsonl", "summary.json", "STOP", "pairs_placebo.csv", "model_facts.json")
RESET_DIRS = ("checkpoints", "adapter", "full_ft", "eval", "downstream")


def reset_for_retry(run: Run, reason: str) -> None:
    """A unit's run directory back to 'queued' before another attempt: nothing of a dead attempt counts."""
    for name in RESET:
        (run.path / name).unlink(missing_ok=True)
    for name in RESET_DIRS:
        shutil.rmtree(run.path / name, ignore_errors=True)
    keep = {k: v for k, v in run.raw_status().items() if k in ("created", "created_ns", "pairs", "host", "sweep",
                                                                  "attempt", "attempts_log")}
    log = list(keep.get("attempts_log") or []) + [{"ended": now(), "reason": reason}]
    write_json(run.path / "status.json", dict(keep, state="queued", phase="queued", step=0, total_steps=None,
                                              updated=now(), attempts_log=log))
    run.log(f"retrying from a clean run directory: {reason}")


def _relay(board, unit: int, run: Run, stop: threading.Event) -> None:
    """Ship mode: the unit's status to the driver every 2 s (the driver writes it into its copy of the run)."""
    while not stop.wait(2.0):
        with contextlib.suppress(Exception):
            board.put.remote(unit, run.raw_status())


def run_unit(run_dir: str, unit: int, threads: int, token: str, ship: bytes | None = None, board=None,
             tasks: dict | None = None, force_ship: bool = False) -> dict:
    """The body of one unit's Ray task: the worker code of a single run (and its benchmarks), on this node.

    Returns the run's final state and message, with the zipped run directory when it had to be shipped
    (this node cannot see the driver's runs directory, or ``force_ship``)."""
    import torch

    torch.set_num_threads(int(threads))
    path = Path(run_dir)
    token_file = path.parent / ".sweep-token"
    shared = token_file.is_file() and token_file.read_text() == token
    tmp = None
    if not shared or force_ship:
        if ship is None:
            raise TLIError(f"unit {unit}: this node cannot see {run_dir} and nothing was shipped to it")
        tmp = Path(tempfile.mkdtemp(prefix="tli-unit-"))
        with zipfile.ZipFile(io.BytesIO(ship)) as zf:
            zf.extractall(tmp)
        path = tmp / path.name
    run = Run(path)
    st = run.raw_status()
    if st.get("state") == "done":  # never rerun what finished (a retry after the task itself had ended)
        return {"state": "done", "message": "", "attempt": st.get("attempt", 1)}
    attempt = int(st.get("attempt") or 0) + 1
    if attempt > 1 or st.get("state") not in ("queued", None):
        reset_for_retry(run, f"attempt {attempt - 1} ended without finishing ({st.get('state')}, "
                             f"{st.get('phase')}): its process died")
    run.update_status(attempt=attempt)
    stop_relay = threading.Event()
    if board is not None:
        threading.Thread(target=_relay, args=(board, unit, run, stop_relay), daemon=True).start()
    try:
        from .jobs.stopping import Stopped
        from .worker import downstream_run, execute

        status = execute(run, lock_held=True, load=_model)  # the load (or the reuse) inside the run: stoppable
        if status.get("state") != "done":
            _MODELS.clear()  # a run cut short may leave the model mid-merge: the next unit loads it afresh
        elif tasks and tasks.get("tasks"):
            try:
                downstream_run(run, list(tasks["tasks"]), int(tasks.get("fewshot") or 0), tasks.get("limit"),
                               lock_held=True, lm=_model(run.config().model))
            except Stopped:  # the unit trained and evaluated: it is done; its benchmarks' own record says stopped
                _MODELS.clear()
            except Exception as exc:  # noqa: BLE001 -- the unit trained and evaluated: it is done; its benchmarks'
                run.log(f"downstream benchmarks failed: {exc}")  # own record (status.json "downstream") says why
        result = {"state": status.get("state"), "message": status.get("message", ""), "attempt": attempt,
                  "host": socket.gethostname(), "pid": os.getpid()}
    finally:
        stop_relay.set()
    if tmp is not None:
        result["zip"] = _zip_dir(path)
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _zip_dir(path: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(path.rglob("*")):
            if f.is_file():
                zf.write(f, f"{path.name}/{f.relative_to(path)}")
    return buf.getvalue()


def _unpack(data: bytes, runs_dir: Path, run_id: str) -> None:
    """A shipped run directory into ``runs_dir/run_id``, replacing the driver's copy all at once."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_id}.shipped-", dir=runs_dir))
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            zf.extractall(tmp)
        publish_dir(tmp / run_id, runs_dir / run_id)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- Ray itself

def ray_address(address: str | None) -> str | None:
    """The cluster to use: the argument, else $RAY_ADDRESS, else None (a local runtime of our own)."""
    address = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    return address or None


def start_ray(address: str | None, cores: int, dashboard: bool = False) -> dict:
    """Connect to ``address`` or start a local runtime; returns what is needed to leave it as found."""
    if address and not os.environ.get("RAY_AUTH_MODE") and (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"  # `ray start` (2.59+) enables token auth: send the token (read at import)
    try:
        import ray
    except ImportError:
        raise TLIError("Ray is not installed: pip install -r requirements.txt") from None
    import logging

    env = dict(os.environ)
    paths = [str(PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))  # local workers import tli_core from here
    kwargs = {"include_dashboard": dashboard, "log_to_driver": False, "logging_level": logging.WARNING,
              "configure_logging": True}
    if ray.is_initialized():  # a runtime this process already holds (tests; a notebook): used as it is
        return {"local": False, "processes": [], "reused": True}
    try:
        if address:
            runtime = {"working_dir": str(PROJECT_ROOT), "excludes": [".venv", "runs", "artifacts", ".git",
                                                                      "workspace", "*.safetensors", ".cache"]}
            ray.init(address=address, runtime_env=runtime, **kwargs)
        else:
            # address="local": a runtime of our own even when a `ray start` cluster runs on this machine (without it,
            # ray.init joins that cluster and refuses our num_cpus)
            ray.init(address="local", num_cpus=cores, object_store_memory=256 << 20, **kwargs)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: one line for the user
        hint = ("; if the cluster uses token authentication, set RAY_AUTH_MODE=token and its token "
                "(RAY_AUTH_TOKEN, or ~/.ray/auth_token from `ray get-auth-token`)" if address else "")
        raise TLIError(f"cannot start Ray{' at ' + address if address else ''}: "
                       f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0]}{hint}") from None
    processes = _ray_processes() if not address else []
    raylet = next((t for t in processes if b"raylet" in _cmdline(t)), None)
    return {"local": not address, "processes": processes, "raylet": raylet}


def _cmdline(tag: str) -> bytes:
    try:
        return Path(f"/proc/{tag.split(':')[0]}/cmdline").read_bytes()
    except OSError:
        return b""


def _ray_processes() -> list[str]:
    """Tags of the processes a local runtime started in our process group (its agents can outlive a killed
    driver; a resume ends them)."""
    me, group = os.getpid(), os.getpgid(0)
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me:
            with contextlib.suppress(OSError, ProcessLookupError):
                if os.getpgid(int(entry.name)) == group and "ray" in (entry / "cmdline").read_bytes().decode(
                        errors="replace"):
                    tag = process_tag(int(entry.name))
                    if tag:
                        out.append(tag)
    return out


def end_leftovers(tags: list[str], wait: float = 5.0) -> int:
    """Kill the recorded processes of an earlier local runtime that are still alive (same pid and start), and wait
    (up to ``wait`` s) until they are gone."""
    killed = []
    for tag in tags or []:
        if process_alive(tag):
            with contextlib.suppress(OSError):
                os.kill(int(tag.split(":")[0]), signal.SIGKILL)
                killed.append(tag)
    end = time.monotonic() + wait
    while killed and time.monotonic() < end and any(process_alive(t) for t in killed):
        time.sleep(0.05)
    return len(killed)


def end_orphans(sweep: Sweep) -> int:
    """After the sweep's driver died: end what its local runtime left running -- Ray's agents and any unit still
    training for nobody -- so a resume starts clean. Nothing is done while the driver lives."""
    st = sweep.raw_status()
    if process_alive(st.get("process")):
        return 0
    tags = list(st.get("ray_processes") or [])
    for u, run in sweep.unit_runs():
        if run is not None and u.get("state") == "running":
            rs = run.raw_status()
            if rs.get("state") in ("queued", "running") and rs.get("host") in (None, socket.gethostname()):
                tags.append(rs.get("process"))
    tags += _workers_of(st.get("ray_raylet"))
    return end_leftovers([t for t in tags if t])


def _workers_of(raylet: str | None) -> list[str]:
    """Tags of the Ray worker processes a (dead) local raylet started: their environment names its pid, and they
    started after it (so a reused pid cannot match)."""
    if not raylet:
        return []
    pid, _, start = str(raylet).partition(":")
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            env = (entry / "environ").read_bytes().split(b"\0")
            if f"RAY_RAYLET_PID={pid}".encode() in env:
                tag = process_tag(int(entry.name))
                if tag and (not start.isdigit() or int(tag.split(":")[1]) >= int(start)):
                    out.append(tag)
    return out


class _Board:
    """Ship mode: the last status each remote unit relayed, collected by the driver."""

    def __init__(self):
        self.latest = {}

    def put(self, unit, status):
        self.latest[unit] = status

    def take(self):
        out, self.latest = self.latest, {}
        return out


# --------------------------------------------------------------------------- the driver

def remaining_seconds(durations: list[float], slots: int) -> float:
    """Time until ``durations`` (seconds of work each, longest placed first) finish on ``slots`` parallel slots."""
    loads = [0.0] * max(1, slots)
    heapq.heapify(loads)
    for d in sorted(durations, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + max(0.0, d))
    return max(loads)


def run_sweep(sweep: Sweep, progress=None, parallel: int | None = None, address: str | None = None,
              retries: int = 1, dashboard: bool = False, fresh: bool = True) -> dict:
    """Run every unit that is not finished, on Ray; returns the sweep's status.

    ``fresh``: an old stop request (of an earlier driver) is cleared first. A driver started in the background by
    ``resume_sweep`` passes False: its launcher cleared it, and a Stop pressed while this driver was still starting
    (Ray takes seconds) is the user's and must be obeyed, not wiped.

    ``progress(units, sweep)`` is called whenever a unit changes state (and every few seconds). The final state is
    written once Ray is shut down, just before the runs directory is free again: a reader who sees it can start
    the next job at once."""
    lock = JobLock(sweep.runs_dir)
    if not lock.acquire(f"sweep {sweep.id}, pid {os.getpid()}"):
        return sweep.update_status(state="failed", message=f"another job holds the runs directory "
                                                          f"({lock.holder()}); one at a time")
    address = ray_address(address)
    started_ray, final = None, None
    try:
        old = sweep.raw_status()
        killed = end_leftovers(old.get("ray_processes") or [])
        spec = sweep.spec()
        units = sweep.cells()
        todo = [u for u in units if u.get("state") not in FINAL]
        trained, control = load_pairs(spec.base.trained_pairs), load_pairs(spec.base.control_pairs)
        _check_units(sweep, spec, units, todo, trained, control)
        todo = [u for u in todo if u.get("state") != "invalid"]
        if fresh:
            sweep.clear_stop()
        sweep.update_status(state="running", pid=os.getpid(), process=my_process_tag(), host=socket.gethostname(),
                            started=old.get("started") or now(), resumed=now() if old.get("started") else None,
                            message="", ray_address=address or "local", leftovers_ended=killed)
        if not todo:
            final = _finish(sweep)
            return final
        _create_runs(sweep, spec, units, todo, trained, control)
        started_ray = start_ray(address, cpu_count(), dashboard)
        import ray

        cluster = None
        if address:  # the cluster's totals, and the largest node (a unit never spans nodes)
            cluster = dict(ray.cluster_resources())
            alive = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
            cluster["max_node_CPU"] = max((r.get("CPU", 0) for r in alive), default=0)
            cluster["max_node_memory"] = max((r.get("memory", 0) for r in alive), default=0)
        p = plan(sweep, len(todo), parallel, cluster)
        if not address:
            p.memory = int(min(p.memory, ray.available_resources().get("memory", p.memory)))
        sweep.update_status(plan=p.to_dict(), ray_processes=started_ray["processes"],
                            ray_raylet=started_ray.get("raylet"))
        final = _drive(sweep, spec, units, todo, p, address, retries, progress)
    except TLIError as exc:
        final = {"state": "failed", "finished": now(), "message": str(exc)}
    finally:
        if started_ray is not None and not started_ray.get("reused"):
            import ray

            with contextlib.suppress(Exception):
                ray.shutdown()
            if started_ray["local"]:
                end_leftovers(started_ray["processes"])
        try:
            status = sweep.update_status(**final) if final else sweep.raw_status()
        finally:
            lock.release()
    return status


def _check_units(sweep, spec, units, todo, trained, control) -> None:
    """Mark units whose settings cannot work (checked once per cell, before anything runs) invalid."""
    from .errors import OverlapError
    from .worker import check_config

    verdicts = {}
    for u in todo:
        if u["cell"] not in verdicts:
            try:
                check_config(spec.config_for(u), trained, control)
                verdicts[u["cell"]] = None
            except OverlapError as exc:
                verdicts[u["cell"]] = str(exc.with_control("the “Accept pairs that are in both sets” box on the "
                                                           "Sweeps page, or --allow-overlap"))
            except TLIError as exc:
                verdicts[u["cell"]] = str(exc)
        if verdicts[u["cell"]]:
            u.update(state="invalid", reason=verdicts[u["cell"]])
    sweep.save_cells(units)


def _create_runs(sweep, spec, units, todo, trained, control) -> None:
    """A run directory (queued) for every unit to run that has none yet; the others are reused."""
    names = sweep.raw_status().get("pair_names")
    several = len(spec.seed_list) > 1
    # a node that reads this token where the driver wrote it sees the driver's runs directory (a shared filesystem)
    (sweep.runs_dir / ".sweep-token").write_text(f"{sweep.id}:{uuid.uuid4().hex}")
    for u in todo:
        if u.get("run") and (sweep.runs_dir / u["run"] / "config.json").is_file():
            u.update(state="queued")  # whatever an earlier driver last wrote, it waits for a slot now
            continue
        name = f"{sweep.id}-c{u['cell']}" + (f"-s{u['seed']}" if several else "") + (
            "-placebo" if u.get("arm") == "placebo" else "")
        run = create_run(spec.config_for(u), sweep.runs_dir, trained, control, name=name,
                         pair_names=names if isinstance(names, dict) else None,
                         status={"sweep": {"id": sweep.id, "cell": u["cell"], "unit": u["unit"], "seed": u["seed"],
                                           "arm": u.get("arm", "tli")}})
        u.update(run=run.id, state="queued", reason="")
    sweep.save_cells(units)


def _drive(sweep, spec, units, todo, p: Plan, address, retries, progress) -> dict:
    import ray

    token = (sweep.runs_dir / ".sweep-token").read_text()
    remote = ray.remote(run_unit)
    ship_all = bool(address) or os.environ.get(SHIP_ENV) == "1"
    board = ray.remote(_Board).options(num_cpus=0).remote() if ship_all else None
    bench = {"tasks": spec.tasks, "fewshot": spec.fewshot, "limit": spec.limit} if spec.tasks else None
    options = {"num_cpus": p.cpus, "num_gpus": p.gpus, "memory": p.memory, "max_retries": int(retries),
               "retry_exceptions": False}
    queue = list(todo)
    flight: dict = {}  # object ref -> unit
    stopping_since = None
    cancelled: set = set()
    by_unit = {u["unit"]: u for u in units}

    def submit(u):
        run_dir = sweep.runs_dir / u["run"]
        Run(run_dir).clear_stop()  # a stop of an earlier session (asked while it waited) is not this one's
        ship = _zip_dir(run_dir) if ship_all else None
        ref = remote.options(**options).remote(str(run_dir), u["unit"], p.threads, token, ship, board, bench,
                                               os.environ.get(SHIP_ENV) == "1")
        flight[ref] = u
        u.update(state="running", attempts=int(u.get("attempts") or 0) + 1)

    last_report = 0.0
    while queue or flight:
        if sweep.stop_requested() and stopping_since is None:
            stopping_since = time.monotonic()
            for u in queue:
                u.update(state="stopped", reason="stopped before it started")
            queue.clear()
            for u in flight.values():
                Run(sweep.runs_dir / u["run"]).request_stop()
            sweep.save_cells(units)
        while queue and len(flight) < p.slots and stopping_since is None:
            submit(queue.pop(0))
            sweep.save_cells(units)
        if stopping_since is not None and time.monotonic() - stopping_since > STOP_GRACE:
            for ref in [r for r in flight if r not in cancelled]:
                ray.cancel(ref, force=True)
                cancelled.add(ref)
        ready, _ = ray.wait(list(flight), num_returns=1, timeout=POLL) if flight else ([], [])
        for ref in ready:
            u = flight.pop(ref)
            _collect(sweep, u, ref)
            sweep.save_cells(units)
            sweep.update_status(done=sum(x.get("state") in FINAL for x in units))
        if board is not None:
            with contextlib.suppress(Exception):
                for unit, status in ray.get(board.take.remote(), timeout=5).items():
                    write_json(sweep.runs_dir / by_unit[unit]["run"] / "status.json", dict(status, relayed=now()))
        if progress and (ready or time.monotonic() - last_report > 5):
            progress(units, sweep)
            last_report = time.monotonic()
    if stopping_since is not None or (sweep.stop_requested() and any(u.get("state") not in FINAL for u in units)):
        # (a stop that came while the driver waited for its last unit's end is a stop, unless everything finished)
        return {"state": "stopped", "finished": now(), "message": "stopped: queued units cancelled, running units "
                                                                  "stopped; finished ones kept"}
    return _finish(sweep)


def _collect(sweep: Sweep, u: dict, ref) -> None:
    """A finished task's outcome into its unit (and, shipped, its run directory into the runs directory)."""
    import ray

    try:
        result = ray.get(ref)
    except Exception as exc:  # the task failed: its worker died (retries spent), was cancelled, or raised
        reason = _ray_reason(exc)
        run = Run(sweep.runs_dir / u["run"])
        st = run.raw_status()
        if st.get("state") in ("queued", "running"):
            with contextlib.suppress(OSError):
                run.update_status(state="stopped" if "cancel" in reason.lower() else "failed", finished=now(),
                                  message=reason)
        u.update(state="stopped" if "cancel" in reason.lower() else "failed", reason=reason)
        return
    if result.get("zip"):
        _unpack(result["zip"], sweep.runs_dir, u["run"])
    u.update(state=result.get("state") or "failed", reason=result.get("message", ""),
             attempts=max(int(u.get("attempts") or 0), int(result.get("attempt") or 1)))


def _ray_reason(exc: Exception) -> str:
    name = type(exc).__name__
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    if "OutOfMemory" in name or "out of memory" in text.lower():
        return f"out of memory: {text}"
    if "WorkerCrashed" in name or "died" in text.lower():
        return f"its process died (retries spent): {text or name}"
    if "Cancel" in name:
        return "cancelled by a stop"
    return f"{name}: {text}"


def _finish(sweep: Sweep) -> dict:
    """The sweep's final status (written by the caller): done, invalid, or failed naming the units that were not."""
    units = sweep.cells()
    invalid = [u for u in units if u["state"] == "invalid"]
    failed = [u for u in units if u["state"] not in FINAL]
    if units and len(invalid) == len(units):
        return {"state": "invalid", "finished": now(), "done": len(units),
                "message": f"no unit could run: {invalid[0]['reason']}"}
    if failed:
        return {"state": "failed", "finished": now(), "done": len(units) - len(failed),
                "message": f"{len(failed)} of {len(units)} units did not finish ("
                           + "; ".join(f"{unit_label(u)}: {u.get('reason') or u['state']}" for u in failed[:3])
                           + "); resume the sweep to run them again"}
    return {"state": "done", "finished": now(), "done": len(units),
            "message": f"{len(invalid)} of {len(units)} units could not run (see each unit's reason)" if invalid
            else ""}


# --------------------------------------------------------------------------- progress and time left

@dataclass
class SweepETA:
    """Where a sweep stands: units finished, what each running one is doing, the time left given the slots."""

    done: int
    running: int
    total: int
    slots: int
    seconds_left: float | None  # None: nothing to estimate from yet
    running_lines: list[str]
    fraction: float  # of the units' work, running units counted by their phase progress
    basis: str

    @property
    def text(self) -> str:
        left = f" · about {_duration(self.seconds_left)} left ({self.basis})" if self.seconds_left is not None else ""
        return (f"{self.done} of {self.total} units finished, {self.running} running on {self.slots} slot(s)"
                + left)


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _unit_seconds(status: dict) -> float | None:
    times = status.get("phase_times") or {}
    total = sum(float(v) for v in times.values() if isinstance(v, (int, float)))
    return total or None


RUN_PHASES = ("checking", "loading model", "embedding before", "checking the 4-bit dequantization", "training",
              "saving the trained weights", "embedding after", "embedding after (adapter merged)", "evaluating")


def phase_fraction(status: dict) -> float:
    """How far a running run is through its phases, counting each phase as an equal share (a rough measure, for
    when no duration has been measured)."""
    prog = status.get("progress") or {}
    phase = prog.get("phase") or status.get("phase")
    if phase not in RUN_PHASES:
        return 0.0
    done, total = prog.get("done") or 0, prog.get("total")
    within = min(1.0, max(0.0, float(done) / float(total))) if isinstance(total, (int, float)) and total else 0.0
    return (RUN_PHASES.index(phase) + within) / len(RUN_PHASES)


def sweep_eta(sweep: Sweep, slots: int | None = None) -> SweepETA:
    """Units done and running, and the time left: each remaining unit's duration (the median of this sweep's
    finished units, else the run estimate from this model's earlier runs here), running units at their own pace,
    laid out on the sweep's slots (its plan, or ``slots`` before it starts)."""
    from .estimate import estimate_run, remaining

    units = sweep.unit_runs()
    status = sweep.raw_status()
    slots = slots or int(((status.get("plan") or {}).get("slots")) or 1)
    finished = [s for u, r in units if u.get("state") == "done" and r is not None
                if (s := _unit_seconds(r.raw_status()))]
    per_unit, basis = None, "no unit has finished yet"
    if finished:
        per_unit = sorted(finished)[len(finished) // 2]
        basis = f"{len(finished)} finished unit(s) of this sweep"
    durations, lines, work = [], [], 0.0
    done = sum(u.get("state") in FINAL for u, _ in units)
    running = 0
    estimates: dict = {}
    for u, run in units:
        state = u.get("state")
        if state in FINAL:
            work += 1.0
            continue
        est = None
        if run is not None and per_unit is None:
            key = u.get("cell")
            if key not in estimates:
                try:
                    cfg = run.config()
                    estimates[key] = estimate_run(cfg, len(run.pairs("trained")), len(run.pairs("control")),
                                                  sweep.runs_dir)
                except TLIError:
                    estimates[key] = None
            est = estimates[key]
            if est is not None:
                basis = "earlier runs of this model here"
        full = per_unit if per_unit is not None else (est.total if est is not None else None)
        if state == "running" and run is not None:
            running += 1
            st = run.raw_status()
            prog = st.get("progress") or {}
            left = remaining(st, est) if per_unit is None else max(0.0, per_unit - (_unit_seconds(st) or 0.0)
                                                                   - float(prog.get("phase_seconds") or 0))
            if left is not None:
                durations.append(left)
            elif full is not None:
                durations.append(full)
            if full and left is not None:
                work += max(0.0, min(1.0, 1 - left / full))
            else:  # nothing measured yet: the unit's place in the run's phases, so the bar moves from the start
                work += phase_fraction(st)
            phase = prog.get("phase") or st.get("phase") or "starting"
            if st.get("state") == "queued":  # handed to Ray, its worker not yet at the first line of the run
                phase = "starting (a Ray worker loads the libraries and the model)"
            count = f" {prog.get('done', 0):g}/{prog.get('total'):g}" if prog.get("total") else ""
            lines.append(f"{unit_label(u)}: {phase}{count}")
        elif full is not None:
            durations.append(full)
    pending = [u for u, _ in units if u.get("state") not in FINAL]
    seconds = remaining_seconds(durations, slots) if durations and len(durations) == len(pending) else (
        0.0 if not pending else None)
    return SweepETA(done=done, running=running, total=len(units), slots=slots, seconds_left=seconds,
                    running_lines=lines, fraction=work / len(units) if units else 0.0, basis=basis)
