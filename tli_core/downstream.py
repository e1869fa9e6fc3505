"""Downstream benchmarks before and after: does early-layer tuning preserve (or help) zero-shot reasoning?

Runs lm-evaluation-harness (``lm-eval``, the field's standard runner) on the base model and on the
model with the run's adapter (or fully fine-tuned blocks), with the same settings, and keeps every
item's correctness, so the change is tested on paired items: McNemar's exact test on the items one
model gets right and the other wrong, and a paired bootstrap CI of the accuracy difference.

Real tasks (XNLI, XCOPA, Belebele, XStoryCloze in Swahili and English) download their data from the
Hugging Face hub as lm-eval always does; offline they fail at once with one line. The local tasks
in ``assets/lm_eval_tasks`` (word choice over the shipped control pairs) run anywhere, through the
same code path.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from .errors import TLIError
from .models import hub_reachable
from .progress import Progress, no_progress

LOCAL_TASKS_DIR = Path(__file__).resolve().parent.parent / "assets" / "lm_eval_tasks"
LOCAL_TASKS = {
    "tli_word_choice_sw_en": "local: pick the English translation of a control-set Swahili word (4 choices)",
    "tli_word_choice_en_sw": "local: pick the Swahili translation of a control-set English word (4 choices)",
}
HUB_TASKS = {
    "xnli_sw": "XNLI, Swahili: natural language inference (3 classes)",
    "xnli_en": "XNLI, English: the same items in English",
    "xcopa_sw": "XCOPA, Swahili: causal commonsense (2 choices)",
    "belebele_swh_Latn": "Belebele, Swahili: reading comprehension (4 choices)",
    "belebele_eng_Latn": "Belebele, English: the same passages in English",
    "xstorycloze_sw": "XStoryCloze, Swahili: story endings (2 choices)",
}
TASKS = {**LOCAL_TASKS, **HUB_TASKS}
BOOTSTRAP = 2000
ITEMS_ENV = "TLI_TASK_ITEMS"  # the folder the local tasks' loader reads (a run's own items), else the shipped ones
ITEM_SEED = 2506


def word_choice_items(df: pd.DataFrame, source: str, target: str, rng) -> list[dict]:
    """One 4-choice item per pair: its ``source`` word, its ``target`` word among 3 distractors drawn from the other
    pairs' targets (never another gold translation of the same word)."""
    gold = df.groupby(source)[target].apply(set).to_dict()
    out = []
    for i, row in df.reset_index(drop=True).iterrows():
        others = sorted({w for w in df[target] if w not in gold[row[source]]})
        if len(others) < 3:
            raise TLIError(f"the local word-choice tasks need at least 4 different {target} words besides each "
                           f"word's translations; this set has too few")
        choices = rng.sample(others, 3) + [row[target]]
        rng.shuffle(choices)
        out.append({"id": f"{source}-{i}", "word": row[source], "choices": choices,
                    "label": choices.index(row[target])})
    return out


def write_local_items(folder: Path, control: pd.DataFrame, trained: pd.DataFrame, seed: int = ITEM_SEED) -> dict:
    """The local tasks' items from a run's own sets: test items from its control pairs, few-shot examples from 20 of
    its trained pairs. Returns where the items came from, and the test words that also occur in the trained set
    (a shared headword with another meaning: allowed, and said)."""
    import json
    import random

    folder.mkdir(parents=True, exist_ok=True)
    shots = trained.head(20)
    for direction, (source, target) in {"sw_en": ("swahili", "english"), "en_sw": ("english", "swahili")}.items():
        rng = random.Random(seed)
        for split, df in (("test", control), ("train", shots)):
            rows = word_choice_items(df.reset_index(drop=True), source, target, rng)
            (folder / f"{direction}_{split}.jsonl").write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    overlap = {"swahili": sorted(set(control["swahili"]) & set(trained["swahili"])),
               "english": sorted(set(control["english"]) & set(trained["english"]))}
    return {"test_pairs": len(control), "fewshot_pairs": len(shots), "source": "the run's control set (test) and "
            "its first 20 trained pairs (few-shot)", "words_also_trained": overlap}


@dataclass
class TaskResult:
    task: str
    items: pd.DataFrame  # doc_id, correct (0/1), target
    accuracy: float
    chance: float | None = None  # the mean of 1 / (answer choices) over the items (multiple choice)


class _RequestBar:
    """Stands in for the ``tqdm`` bar lm-eval's HFLM draws over its requests: the same counts go to our
    progress callback (the Train/Runs pages, the CLI's one line, the run's status) instead of stderr."""

    def __init__(self, report, iterable=None, total=None, **_ignored):
        self.report, self.iterable = report, iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self._last = 0, 0.0
        self.report(self.n, self.total)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.monotonic()
        if now - self._last > 0.5 or (self.total is not None and self.n >= self.total):
            self._last = now
            self.report(self.n, self.total)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _requests_to(report):
    """lm-eval's request bars reported through ``report(done, total)`` for the duration of the block; its
    tokenizing bars (quick) silenced."""
    from lm_eval.api import model as api
    from lm_eval.api import task as api_task
    from lm_eval.models import huggingface as hf

    quiet = [api, api_task]
    originals = [hf.tqdm] + [m.tqdm for m in quiet]
    hf.tqdm = lambda *args, **kwargs: _RequestBar(report, *args, **kwargs)
    for m in quiet:
        m.tqdm = lambda *args, **kwargs: _RequestBar(lambda done, total: None, *args, **kwargs)
    try:
        yield
    finally:
        for m, original in zip([hf] + quiet, originals, strict=True):
            m.tqdm = original


@functools.lru_cache(maxsize=2)
def _task_manager(include_defaults: bool):
    """lm-eval's task index with the local tasks; with its own thousands of tasks it takes ~20 s to build, so it is
    built once per process (it holds where each task's configuration is, not the tasks' data)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(LOCAL_TASKS_DIR), include_defaults=include_defaults)


def _lm_eval_tasks() -> frozenset[str]:
    """Every task, group and tag name lm-eval knows, with the local tasks."""
    return frozenset(_task_manager(True).all_tasks)


def check_tasks(tasks: list[str]) -> None:
    """Refuse task names lm-eval does not know before a model loads or a run records anything."""
    missing = [t for t in tasks if t not in TASKS and t not in _lm_eval_tasks()]
    if missing:
        raise TLIError(f"lm-eval knows no task {', '.join(missing)}; e.g. {', '.join(TASKS)}")


def run_tasks(model, tokenizer, tasks: list[str], num_fewshot: int = 0, limit: int | float | None = None,
              batch_size: int = 8, seed: int = 0, progress: Progress = no_progress,
              phase: str = "downstream", items: Path | None = None) -> dict[str, TaskResult]:
    """Evaluate ``model`` on ``tasks`` with lm-eval; per task, every item's correctness.

    ``items``: the folder the local tasks read their items from (a run's own, see :func:`write_local_items`).
    Progress is reported per task as lm-eval's scored requests (one per item and answer choice).
    """
    with _items_from(items):
        return _run_tasks(model, tokenizer, tasks, num_fewshot, limit, batch_size, seed, progress, phase)


@contextlib.contextmanager
def _items_from(folder: Path | None):
    old = os.environ.get(ITEMS_ENV)
    if folder is not None:
        os.environ[ITEMS_ENV] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ITEMS_ENV, None)
        else:
            os.environ[ITEMS_ENV] = old


def _run_tasks(model, tokenizer, tasks, num_fewshot, limit, batch_size, seed, progress, phase):
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    unknown = [t for t in tasks if t not in TASKS and not t.startswith("tli_")]
    hub = [t for t in tasks if t not in LOCAL_TASKS]
    if hub and not hub_reachable(timeout=2.0):  # fail at once, not after lm-eval's retries
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"
    manager = _task_manager(bool(hub))
    known = set(manager.all_tasks)
    missing = [t for t in tasks if t not in known]
    if missing:
        raise TLIError(f"lm-eval knows no task {', '.join(missing)}" + (
            f" (suggested: {', '.join(TASKS)})" if unknown else ""))
    pad = tokenizer.pad_token  # HFLM sets a pad token of its own choosing; the shared tokenizer keeps ours
    chatter = logging.getLogger("lm_eval")  # its notes on passing a built model, metadata, few-shot defaults
    level = chatter.level
    chatter.setLevel(logging.ERROR)
    out = {}
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=512)
        for i, task in enumerate(tasks):
            detail = f"{task} (task {i + 1} of {len(tasks)}), requests"
            progress(phase, 0, None, detail)
            try:
                with _requests_to(lambda done, total, detail=detail: progress(phase, done, total, detail)):
                    res = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager,
                                                  num_fewshot=num_fewshot, limit=limit, log_samples=True,
                                                  bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
                                                  torch_random_seed=seed, fewshot_random_seed=seed)
            except ConnectionError as exc:
                raise TLIError(f"task {task} needs its dataset from the Hugging Face hub, which cannot be reached "
                               f"from here ({str(exc).splitlines()[0][:160]}); the local tasks "
                               f"({', '.join(LOCAL_TASKS)}) run offline") from None
            samples = res["samples"][task]
            items = pd.DataFrame([{"doc_id": int(s["doc_id"]), "correct": float(s["acc"]),
                                   "target": str(s.get("target"))} for s in samples])
            choices = [len(s.get("arguments") or []) for s in samples]
            chance = float(np.mean([1 / c for c in choices])) if choices and min(choices) > 1 else None
            out[task] = TaskResult(task, items.sort_values("doc_id").reset_index(drop=True),
                                   float(items["correct"].mean()) if len(items) else float("nan"), chance)
    finally:
        tokenizer.pad_token = pad
        chatter.setLevel(level)
    return out


def paired_items(base: TaskResult, tuned: TaskResult, seed: int = 0) -> dict:
    """Accuracy before/after on the same items, McNemar's exact test, paired bootstrap 95% CI of the change."""
    merged = base.items.merge(tuned.items, on="doc_id", suffixes=("_base", "_tuned"))
    if merged.empty:
        raise TLIError(f"task {base.task}: no item was scored by both models")
    a, b = merged["correct_base"].to_numpy(), merged["correct_tuned"].to_numpy()
    lost, gained = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    p = float(sps.binomtest(min(lost, gained), lost + gained, 0.5).pvalue) if lost + gained else 1.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(BOOTSTRAP, len(a)))
    diffs = (b[idx] - a[idx]).mean(axis=1)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    ci_base = np.percentile(a[idx].mean(axis=1), [2.5, 97.5])
    ci_tuned = np.percentile(b[idx].mean(axis=1), [2.5, 97.5])
    mdc = minimum_detectable_change(len(a), lost + gained)
    out = {"task": base.task, "n": int(len(a)), "acc_base": float(a.mean()), "acc_tuned": float(b.mean()),
           "change": float(b.mean() - a.mean()), "ci_low": float(lo), "ci_high": float(hi),
           "acc_base_ci": [float(ci_base[0]), float(ci_base[1])],
           "acc_tuned_ci": [float(ci_tuned[0]), float(ci_tuned[1])],
           "lost": lost, "gained": gained, "p_mcnemar": p, "mdc": mdc}
    out["verdict"] = benchmark_verdict(out)
    return out


Z_ALPHA, Z_POWER = 1.959964, 0.841621  # two-sided 5 % test, 80 % power


def minimum_detectable_change(n: int, discordant: int) -> float:
    """The smallest accuracy change McNemar's test detects with 80 % power at 5 % (normal approximation), for ``n``
    paired items of which a share ``discordant / n`` (at least one item) differ between the two models:
    (z_0.975 + z_0.8) * sqrt(p_disc / n). With 40 items and 10 % discordance: about 14 points."""
    if n <= 0:
        return float("nan")
    p_disc = max(discordant, 1) / n
    return float((Z_ALPHA + Z_POWER) * np.sqrt(p_disc / n))


def benchmark_verdict(r: dict) -> str:
    """In words: improved / worse (significant, CI off 0), no change beyond ±MDC (CI inside it), else inconclusive."""
    lo, hi, mdc, p = r["ci_low"], r["ci_high"], r["mdc"], r["p_mcnemar"]
    if p < 0.05 and lo > 0:
        return "improved"
    if p < 0.05 and hi < 0:
        return "worse"
    if np.isfinite(mdc) and -mdc < lo and hi < mdc:
        return f"no change beyond ±{mdc:.1%}"
    return f"inconclusive: the CI spans the ±{mdc:.1%} this test can detect"


def downstream_table(summary: dict) -> pd.DataFrame:
    """One row per task: accuracy before and after with their CIs, the change and its CI, McNemar's p."""
    rows = []
    chance = summary.get("chance") or {}
    for task, r in summary["results"].items():
        rows.append({"task": task, "n": r["n"], "chance": chance.get(task), "acc base": r["acc_base"],
                     "acc tuned": r["acc_tuned"],
                     "change": r["change"], "change CI low": r["ci_low"], "change CI high": r["ci_high"],
                     "lost": r["lost"], "gained": r["gained"], "p (McNemar)": r["p_mcnemar"],
                     "minimum detectable change": r.get("mdc", minimum_detectable_change(r["n"], r["lost"]
                                                                                        + r["gained"])),
                     "verdict": r.get("verdict") or benchmark_verdict(dict(r, mdc=minimum_detectable_change(
                         r["n"], r["lost"] + r["gained"])))})
    return pd.DataFrame(rows)


def item_table(base: dict[str, TaskResult], tuned: dict[str, TaskResult]) -> pd.DataFrame:
    frames = []
    for task in base:
        m = base[task].items.merge(tuned[task].items[["doc_id", "correct"]], on="doc_id",
                                   suffixes=("_base", "_tuned"))
        frames.append(m.assign(task=task)[["task", "doc_id", "target", "correct_base", "correct_tuned"]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
