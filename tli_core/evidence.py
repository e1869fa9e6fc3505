"""What a result may claim: the three questions a reviewer asks of every improvement, answered in one place.

1. Is it specific to translations? The change of cos(Swahili, English) minus the change of the same
   Swahili word's similarity to non-translations (``evaluation.py``), significant after correction
   (across layers in a run's view, across cells in a sweep).
2. Is it larger than seed noise? With several seeds, the seeds are the replicates: a one-sample t over
   their mean specific effects (``stats.replicate_stats``).
3. Is it larger than the same training on wrong pairs? A placebo run (same settings and seed, each
   Swahili word paired with an English word that is none of its translations) gives a
   difference-in-differences of the specific effect: per seed with several seeds, else per headword.

A green arrow or a star (:attr:`Verdict.star`) means all three hold. A specific, significant
improvement that has not been checked against seeds or a placebo is reported as such, in words, without
one; so is everything else. The paper's raw change is always shown beside it, labelled raw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from .stats import effect_stats, replicate_stats

ALPHA = 0.05
LEVELS = {
    "confirmed": "specific to translations, beyond seed noise and beyond the placebo",
    "unconfirmed": "specific to translations and significant, not yet checked against {missing}",
    "within_seed_noise": "specific in the words, but not beyond seed-to-seed variation",
    "not_beyond_placebo": "specific, but not larger than the same training on wrong pairs (placebo)",
    "not_specific": "no change specific to translations",
    "worse": "specific alignment decreased",
    "unknown": "not evaluated",
}


@dataclass
class Verdict:
    level: str  # a key of LEVELS
    text: str  # one line for a headline
    missing: list[str] = field(default_factory=list)  # checks not made: "seeds", "placebo"

    @property
    def star(self) -> bool:
        """The only condition under which a page shows a green arrow or a star."""
        return self.level == "confirmed"

    def to_dict(self) -> dict:
        return asdict(self) | {"star": self.star}


def _fmt_p(p) -> str:
    return "–" if p is None or not np.isfinite(p) else f"{p:.3g}"


def judge(change: float | None, p_corrected: float | None, seeds: dict | None = None, placebo: dict | None = None,
          raw_change: float | None = None, nontrans_change: float | None = None,
          correction: str = "corrected", words_significant: bool = False) -> Verdict:
    """The verdict on one set's specific effect.

    ``change``/``p_corrected``: the specific effect (mean over seeds where there are several) and its p after
    the family's correction -- across seeds when ``seeds['n'] >= 2``, else across headwords. ``seeds``: a
    ``replicate_stats`` dict of the per-seed effects (None or n < 2: one seed). ``placebo``: the
    difference-in-differences dict of :func:`placebo_contrast` (None: no placebo run).
    ``words_significant``: every seed was significant across its words (so a miss across seeds is seed noise).
    """
    if change is None or not np.isfinite(change):
        return Verdict("unknown", LEVELS["unknown"])
    shared = ""
    if raw_change is not None and nontrans_change is not None:
        shared = f"; raw change {raw_change:+.4f}, of which non-translations moved {nontrans_change:+.4f}"
    head = f"specific change {change:+.4f} (p {correction} {_fmt_p(p_corrected)}{shared})"
    significant = p_corrected is not None and np.isfinite(p_corrected) and p_corrected < ALPHA
    if not significant:
        if words_significant and seeds is not None and seeds.get("n", 0) >= 2:
            return Verdict("within_seed_noise", f"{LEVELS['within_seed_noise']}: {head} across {seeds['n']} seeds")
        return Verdict("not_specific", f"{LEVELS['not_specific']}: {head}")
    if change < 0:
        return Verdict("worse", f"{LEVELS['worse']}: {head}")
    missing = []
    several = seeds is not None and seeds.get("n", 0) >= 2
    if not several:
        missing.append("seeds")
    if placebo is None:
        missing.append("placebo")
    if placebo is not None and not (placebo.get("p") is not None and placebo["p"] < ALPHA and placebo["change"] > 0):
        return Verdict("not_beyond_placebo", f"{LEVELS['not_beyond_placebo']}: {head}; TLI − placebo "
                                             f"{placebo['change']:+.4f} (p {_fmt_p(placebo.get('p'))})", missing)
    if missing:
        what = " or ".join({"seeds": "seed-to-seed variation (one seed)", "placebo": "a placebo run"}[m]
                           for m in missing)
        return Verdict("unconfirmed", LEVELS["unconfirmed"].format(missing=what) + f": {head}", missing)
    return Verdict("confirmed", f"{LEVELS['confirmed']}: {head}; across {seeds['n']} seeds; TLI − placebo "
                                f"{placebo['change']:+.4f} (p {_fmt_p(placebo.get('p'))})")


def evidence_table(groups: dict[str, dict]) -> pd.DataFrame:
    """Every measure of every set, one row each: before, after, change, its CI, p and the test behind it."""
    rows = []
    for name, g in groups.items():
        s = g.get("specific") or {}
        if s:
            rows.append({"set": name, "measure": "specific effect", "before": s["spec_before"],
                         "after": s["spec_after"], "change": s["change"], "CI low": s["ci_low"],
                         "CI high": s["ci_high"], "p": s["p"],
                         "p corrected": s.get("p_holm"), "test": f"t on {s['n_units']} headword means (Holm over "
                                                                 f"layers); CI resamples headwords"})
            rows.append({"set": name, "measure": "non-translation similarity", "before": s["nontrans_before"],
                         "after": s["nontrans_after"], "change": s["nontrans_change"], "CI low": None, "CI high": None,
                         "p": None, "p corrected": None, "test": "mean over the pool's non-translations"})
        for measure, r in (g.get("retrieval") or {}).items():
            rows.append({"set": name, "measure": measure.replace("hit", "hit@").replace("_", ", "),
                         "before": r["before"], "after": r["after"], "change": r["change"], "CI low": r["ci_low"],
                         "CI high": r["ci_high"], "p": r["p"], "p corrected": None,
                         "test": f"McNemar exact on {r['n']} words ({r['gained']} gained, {r['lost']} lost)"})
        rows.append({"set": name, "measure": "raw cosine (paper)", "before": g["mean_before"], "after": g["mean_after"],
                     "change": g["change"], "CI low": g["ci_low"], "CI high": g["ci_high"], "p": g["p"],
                     "p corrected": g.get("p_holm"),
                     "test": "paired t over pairs (the paper's); CI resamples headwords"
                     + (f"; over {g['n_units']} headwords p = {_fmt_p(g.get('p_units'))}" if g.get("n_units") else "")})
        if "shuffled_mean_before" in g:
            rows.append({"set": name, "measure": "shuffled pairs (baseline)", "before": g["shuffled_mean_before"],
                         "after": g["shuffled_mean_after"],
                         "change": g["shuffled_mean_after"] - g["shuffled_mean_before"], "CI low": None,
                         "CI high": None, "p": None, "p corrected": None, "test": "a derangement of the English side"})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- several runs of one setting

@dataclass
class Outcome:
    """One trained run's result for one set under one protocol: what replication and placebo need of it."""

    seed: int
    group: dict  # the set's summary (summary.json groups[set]): raw stats, "specific", "retrieval"
    pairs: pd.DataFrame | None  # its eval-layer per-pair table (swahili, english, spec_change, ...)


def _specific(o: Outcome) -> float | None:
    s = o.group.get("specific")
    return float(s["change"]) if isinstance(s, dict) and s.get("change") is not None else None


def placebo_contrast(tli: list[Outcome], placebo: list[Outcome], seed: int = 0) -> dict | None:
    """TLI's specific effect minus its placebo's (difference-in-differences), with a CI and a test.

    Seeds with both runs are matched; with two or more such seeds the seeds are the replicates (one-sample t
    over the per-seed differences). With one, the difference is taken per pair (same words, both runs) and
    tested with headwords as units.
    """
    by_seed = {o.seed: o for o in placebo}
    matched = [(t, by_seed[t.seed]) for t in tli if t.seed in by_seed]
    if not matched:
        return None
    diffs = [(_specific(t), _specific(p)) for t, p in matched]
    diffs = [(a, b) for a, b in diffs if a is not None and b is not None]
    if not diffs:
        return None
    placebo_mean = float(np.mean([b for _, b in diffs]))
    if len(diffs) >= 2:
        rep = replicate_stats([a - b for a, b in diffs])
        return {"change": rep["mean"], "ci_low": rep["ci_low"], "ci_high": rep["ci_high"], "p": rep["p"],
                "basis": f"{rep['n']} seeds as replicates", "n": rep["n"], "placebo_specific": placebo_mean,
                "per_seed": rep["values"]}
    t, p = matched[0]
    if t.pairs is None or p.pairs is None:
        return {"change": diffs[0][0] - diffs[0][1], "ci_low": None, "ci_high": None, "p": None,
                "basis": "one seed, per-pair tables missing", "n": 1, "placebo_specific": placebo_mean}
    both = t.pairs.merge(p.pairs, on=["swahili", "english"], suffixes=("_tli", "_placebo"))
    d = both["spec_change_tli"] - both["spec_change_placebo"]
    ok = np.isfinite(d)
    st = effect_stats(d[ok], both.loc[ok, "swahili"], seed=seed)
    return {"change": st.mean, "ci_low": st.ci_low, "ci_high": st.ci_high, "p": st.p,
            "basis": f"one seed: per pair, {st.n_units} Swahili headwords as units", "n": 1,
            "placebo_specific": placebo_mean}


def replicated(tli: list[Outcome], placebo: list[Outcome] | None = None, seed: int = 0,
               p_words_key: str = "p_holm") -> dict:
    """One setting's result over its seeds (and against its placebo) for one set.

    Returns the mean raw, non-translation, specific and retrieval changes over the seeds, the seeds' spread
    (``seeds``: replicate_stats of the specific effect), the p that judges it (across seeds with two or more,
    else the one run's headword-level p under ``p_words_key``), the placebo contrast and the verdict (with
    the p uncorrected across cells: a sweep corrects it and judges again).
    """
    placebo = placebo or []
    spec = [_specific(o) for o in tli]
    seeds = replicate_stats(spec)

    def mean_of(get):
        vals = [v for o in tli if (v := get(o)) is not None and np.isfinite(v)]
        return float(np.mean(vals)) if vals else None

    out = {
        "n_seeds": len(tli), "seeds_list": [o.seed for o in tli], "seeds": seeds,
        "specific": seeds["mean"],
        "raw": mean_of(lambda o: o.group.get("change")),
        "nontrans": mean_of(lambda o: (o.group.get("specific") or {}).get("nontrans_change")),
        "shuffled": mean_of(lambda o: _diff(o.group, "shuffled_mean")),
        "hit1_csls": mean_of(lambda o: ((o.group.get("retrieval") or {}).get("hit1_csls") or {}).get("change")),
        "hit1_nn": mean_of(lambda o: ((o.group.get("retrieval") or {}).get("hit1_nn") or {}).get("change")),
        "placebo": placebo_contrast(tli, placebo, seed) if placebo else None,
    }
    if seeds["n"] >= 2:
        out["p"], out["basis"] = seeds["p"], f"{seeds['n']} seeds as replicates"
        out["ci_low"], out["ci_high"] = seeds["ci_low"], seeds["ci_high"]
    elif tli:
        s = tli[0].group.get("specific") or {}
        out["p"] = s.get(p_words_key, s.get("p"))
        out["basis"] = "one seed: Swahili headwords as units"
        out["ci_low"], out["ci_high"] = s.get("ci_low"), s.get("ci_high")
    else:
        out.update(p=None, basis="no run", ci_low=None, ci_high=None)
    words = [(o.group.get("specific") or {}).get(p_words_key) for o in tli]
    words_significant = bool(words) and all(p is not None and p < ALPHA for p in words)
    out["words_significant"] = words_significant
    out["verdict"] = judge(out["specific"], out["p"], seeds, out["placebo"], out["raw"], out["nontrans"],
                           correction="across seeds" if seeds["n"] >= 2 else "Holm over layers",
                           words_significant=words_significant).to_dict()
    return out


def _diff(group: dict, key: str) -> float | None:
    b, a = group.get(f"{key}_before"), group.get(f"{key}_after")
    return None if b is None or a is None else float(a) - float(b)


def run_verdict(group: dict, correction: str = "Holm over layers") -> Verdict:
    """The verdict of one run's set from its summary alone (one seed, no placebo known to it)."""
    s = group.get("specific") if isinstance(group, dict) else None
    if not isinstance(s, dict):
        return Verdict("unknown", "evaluated before the specific effect existed: evaluate the run again to see it")
    return judge(s.get("change"), s.get("p_holm", s.get("p")), None, None, group.get("change"),
                 s.get("nontrans_change"), correction=correction)


def layer_choice_note(config: dict, eval_layer: int, protocol_layer: int | None = None) -> str:
    """How the run's target layer was chosen, and what that means for the numbers at ``eval_layer`` (the selection
    is evaluated on the pairs that made it only when it came from a scan of the same pairs)."""
    targets = config.get("target_layers") or []
    where = f"target layer(s) {', '.join(map(str, targets))}"
    choice = config.get("layer_choice", "given")
    at_target = eval_layer in targets
    if choice == "scan":
        return (f"The {where} came from a layer scan of the same trained pairs evaluated here: "
                + ("at this layer the trained set's result is double-dipped (the layer was picked for its gap on these "
                   "very pairs)" if at_target else "the trained set helped choose the layer")
                + "; the control set was not used to choose it. A held-out choice (Layer scan) avoids this.")
    if choice == "scan-held-out":
        return (f"The {where} were chosen on half of the trained headwords and checked on the other half (Layer scan, "
                f"held-out split); the control set was not used to choose.")
    return (f"The {where} were set before looking at these pairs (typed, or the paper's layer 2): no selection to "
            f"correct for.")
