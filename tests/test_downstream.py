"""Downstream benchmarks through lm-evaluation-harness: the shipped local task, end to end, base and adapter.

Every item's correctness lm-eval reports is checked against our own log-likelihood scoring of the
four answer choices, and the paired statistics against independent formulas.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tli_core import downstream
from tli_core.cli import main
from tli_core.downstream import LOCAL_TASKS, LOCAL_TASKS_DIR, TaskResult, paired_items, run_tasks
from tli_core.errors import TLIError
from tli_core.figures import downstream_figure
from tli_core.files import read_csv
from tli_core.jobs.runner import start_downstream
from tli_core.probes import probe_scores
from tli_core.report import build_report
from tli_core.trained import trained_model
from tli_core.worker import downstream_run

TASKS = list(LOCAL_TASKS)


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    from tests.conftest import trained_tiny_run

    return trained_tiny_run(tiny_model_dir, tmp_path_factory.mktemp("downstream"), learning_rate=3e-2)


def choice_correct(model, tokenizer, doc: dict, context: str) -> float:
    """Our own scoring of a multiple-choice item: the sum of log-probabilities of ' ' + choice after the
    context; correct when the gold choice scores highest."""
    ctx = tokenizer(context)["input_ids"]
    scores = []
    for choice in doc["choices"]:
        whole = tokenizer(context + " " + choice)["input_ids"]
        with torch.no_grad():
            logp = model(torch.tensor([whole])).logits.float().log_softmax(-1)[0]
        scores.append(sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole))))
    return float(int(np.argmax(scores)) == doc["label"])


def test_the_local_task_runs_end_to_end_for_base_and_adapter(lora_run, tiny):
    pad_before = tiny.tokenizer.pad_token
    summary = downstream_run(lora_run, TASKS)
    assert tiny.tokenizer.pad_token == pad_before  # lm-eval's HFLM does not keep the shared tokenizer changed
    assert lora_run.downstream()["state"] == "done" and lora_run.downstream_summary() == json.loads(
        (lora_run.path / "downstream" / "summary.json").read_text())
    items = read_csv(lora_run.path / "downstream" / "items.csv")
    control = lora_run.pairs("control")
    n_items = len(control)
    # the items come from this run's own control set (the shipped 63 would hold words another run trained on)
    assert len(items) == 2 * n_items and set(items["task"]) == set(TASKS)
    assert summary["local_items"]["test_pairs"] == n_items and summary["local_items"]["words_also_trained"] == {
        "swahili": [], "english": []}

    # every item, both models, scored independently of lm-eval
    own = lora_run.path / "downstream" / "task_items" / "sw_en_test.jsonl"
    docs = [json.loads(line) for line in own.read_text().splitlines()]
    assert [d["word"] for d in docs] == list(control["swahili"])
    assert [d["choices"][d["label"]] for d in docs] == list(control["english"])
    mine = items[items["task"] == "tli_word_choice_sw_en"].sort_values("doc_id")
    assert list(mine["doc_id"]) == list(range(n_items))
    base = [choice_correct(tiny.model, tiny.tokenizer, d, f"Swahili: {d['word']}\nEnglish:") for d in docs]
    probe = torch.tensor([tiny.tokenizer(f"Swahili: {docs[0]['word']}\nEnglish: {docs[0]['choices'][0]}")["input_ids"]])
    with torch.no_grad():
        base_logits = tiny.model(probe).logits
    with trained_model(tiny.model, lora_run.adapter_dir) as tuned:
        after = [choice_correct(tuned, tiny.tokenizer, d, f"Swahili: {d['word']}\nEnglish:") for d in docs]
        with torch.no_grad():
            tuned_logits = tuned(probe).logits
    assert list(mine["correct_base"]) == base and list(mine["correct_tuned"]) == after
    assert not torch.allclose(base_logits, tuned_logits)  # the two passes really are two models

    r = summary["results"]["tli_word_choice_sw_en"]
    a, b = np.array(base), np.array(after)
    lost, gained = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    k, n = min(lost, gained), lost + gained
    p_exact = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    assert (r["n"], r["lost"], r["gained"]) == (n_items, lost, gained)
    assert r["acc_base"] == pytest.approx(a.mean()) and r["acc_tuned"] == pytest.approx(b.mean())
    assert r["p_mcnemar"] == pytest.approx(p_exact)
    assert r["ci_low"] <= r["change"] <= r["ci_high"]
    assert summary["chance"]["tli_word_choice_sw_en"] == pytest.approx(0.25)

    # the run's report and figure carry the results
    html = build_report(lora_run)
    assert "Downstream benchmarks" in html and "tli_word_choice_en_sw" in html
    fig = downstream_figure(summary)
    assert [t.name for t in fig.data][:3] == ["base model", "tuned model", "change"]


def test_paired_statistics_agree_with_independent_formulas():
    rng = np.random.default_rng(3)
    a = (rng.random(200) < 0.55).astype(float)
    b = np.where(rng.random(200) < 0.2, 1 - a, a)
    items = pd.DataFrame({"doc_id": range(200), "target": "x"})
    r = paired_items(TaskResult("t", items.assign(correct=a), a.mean()),
                     TaskResult("t", items.assign(correct=b), b.mean()), seed=0)
    lost, gained = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    n, k = lost + gained, min(lost, gained)
    assert (r["lost"], r["gained"]) == (lost, gained)
    assert r["p_mcnemar"] == pytest.approx(min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n))
    assert r["change"] == pytest.approx(b.mean() - a.mean())
    se = np.std(b - a, ddof=1) / np.sqrt(200)  # the bootstrap CI is close to the normal one at n = 200
    assert r["ci_low"] == pytest.approx(r["change"] - 1.96 * se, abs=0.02)
    assert r["ci_high"] == pytest.approx(r["change"] + 1.96 * se, abs=0.02)
    with pytest.raises(TLIError, match="no item"):
        paired_items(TaskResult("t", items.assign(correct=a), 0), TaskResult("t", items.assign(
            correct=a, doc_id=items["doc_id"] + 1000), 0))


def test_a_hub_task_offline_fails_at_once_in_one_line(tiny, monkeypatch):
    monkeypatch.setattr(downstream, "hub_reachable", lambda timeout=2.0: False)
    with pytest.raises(TLIError) as err:
        run_tasks(tiny.model, tiny.tokenizer, ["xnli_sw"], limit=2)
    message = str(err.value)
    assert "cannot be reached" in message and "run offline" in message and "\n" not in message
    with pytest.raises(TLIError, match="knows no task no_such_task"):
        run_tasks(tiny.model, tiny.tokenizer, ["no_such_task"], limit=2)


def test_the_cli_and_the_launcher(lora_run, capsys):
    code = main(["downstream", "--run", lora_run.id, "--runs-dir", str(lora_run.path.parent), "--tasks",
                 "tli_word_choice_en_sw", "--limit", "10", "--fewshot", "2", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tli_word_choice_en_sw" in out and "p (McNemar)" in out and "2-shot, limit 10" in out
    summary = lora_run.downstream_summary()
    assert summary["num_fewshot"] == 2 and summary["limit"] == 10
    assert summary["results"]["tli_word_choice_en_sw"]["n"] == 6  # the limit of 10, on the run's 6 control pairs
    for bad, match in ((dict(tasks=[]), "at least one task"), (dict(tasks=["x;rm -rf"]), "not a task name"),
                       (dict(tasks=TASKS, limit=0), "limit"), (dict(tasks=TASKS, num_fewshot=-1), "few-shot")):
        with pytest.raises(TLIError, match=match):
            start_downstream(lora_run, **bad)


def test_probe_scores_match_an_independent_chrf():
    def chrf(hyps, refs, order=6, beta=2.0):
        stats = np.zeros((order, 3))  # hyp, ref, match per n-gram order, summed over the corpus
        for h, r in zip(hyps, refs, strict=True):
            h, r = "".join(h.split()), "".join(r.split())
            for n in range(1, order + 1):
                hg = pd.Series([h[i:i + n] for i in range(len(h) - n + 1)]).value_counts()
                rg = pd.Series([r[i:i + n] for i in range(len(r) - n + 1)]).value_counts()
                stats[n - 1] += [hg.sum(), rg.sum(), sum(min(c, rg.get(g, 0)) for g, c in hg.items())]
        used = [(m / h, m / r) for h, r, m in stats if h > 0 and r > 0]
        p, r = np.mean([u[0] for u in used]), np.mean([u[1] for u in used])
        return 0.0 if p + r == 0 else 100 * (1 + beta**2) * p * r / (beta**2 * p + r)

    table = pd.DataFrame({"direction": ["sw→en"] * 3 + ["en→sw"] * 2,
                          "expected": ["water", "dog", "good morning", "maji", "mbwa"],
                          "base": ["water", "cat", "morning", "", "mbwa"],
                          "tuned": ["water", "dog", "good morning", "maji", "mbwa"],
                          "base_correct": [True, False, False, False, True],
                          "tuned_correct": [True] * 5})
    scores = probe_scores(table).set_index(["direction", "model"])
    for direction, d in [("all", table)] + list(table.groupby("direction")):
        assert scores.loc[(direction, "base"), "chrF"] == pytest.approx(chrf(list(d["base"]), list(d["expected"])))
        assert scores.loc[(direction, "tuned"), "chrF"] == pytest.approx(100.0)
        assert scores.loc[(direction, "tuned"), "BLEU"] == pytest.approx(100.0)  # not 0: effective n-gram order
    assert scores.loc[("all", "base"), "expected word found"] == pytest.approx(0.4)
    assert 0 < scores.loc[("all", "base"), "BLEU"] < 100


def test_the_local_task_files_are_what_make_tasks_writes(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tasks", LOCAL_TASKS_DIR / "make_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path)
    module.main()
    for f in Path(LOCAL_TASKS_DIR).glob("*.jsonl"):
        assert (tmp_path / f.name).read_text(encoding="utf-8") == f.read_text(encoding="utf-8"), f.name
    control = pd.read_csv(module.ASSETS / "pairs_control.csv")
    test = [json.loads(line) for line in (LOCAL_TASKS_DIR / "sw_en_test.jsonl").read_text().splitlines()]
    assert [d["choices"][d["label"]] for d in test] == list(control["english"])
