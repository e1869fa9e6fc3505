"""``TLIConfig``: one TLI run's settings, saved verbatim as ``config.json``, shown in the UI, read by the CLI.

Defaults are the paper's published settings (arXiv 2506.15415). Checks that need no model run
when a config is made (``__post_init__``); the settings that depend on a model (layers, blocks,
target modules) stay as the user wrote them and are resolved by the pure function
:func:`resolve`, which returns a new :class:`Resolved` object and a list of warnings.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .anatomy import default_lora_targets
from .embeddings import POOLINGS
from .errors import TLIError
from .layers import parse_blocks, resolve_layer
from .models import ModelShape, ModelSpec
from .pairs import DEFAULT_CONTROL, DEFAULT_TRAINED
from .precision import PRECISIONS
from .protocols import DEFAULT_PROTOCOLS, PROTOCOLS, check_eval_layer, get_protocol, resolve_eval_layer

LOSSES = ("triplet", "infonce")
METHODS = ("lora", "full")
PAIRINGS = ("translations", "deranged")  # what the loss pairs each Swahili word with: TLI, or its placebo
NEGATIVES = ("not-translations", "any-other")  # which in-batch English words may be a Swahili word's negative
LAYER_CHOICES = ("given", "scan", "scan-held-out")  # how the target layer was chosen (double-dipping or not)
PLACEMENTS = ("all", "up_to_target", "early", "late")


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class TLIConfig:
    """One TLI run. Defaults are the paper's published settings (arXiv 2506.15415)."""

    model: ModelSpec = _help("the model and how to load it (default: demo, NF4 as the paper)",
                             default_factory=ModelSpec)
    trained_pairs: str = _help("word pairs to train on (CSV/TSV/JSON/JSONL)", default=str(DEFAULT_TRAINED))
    control_pairs: str = _help("unseen word pairs, evaluated only", default=str(DEFAULT_CONTROL))
    trained_subset: int | None = _help("train on a seeded random sample of this many pairs (default: all)",
                                       default=None)
    control_subset: int | None = _help("evaluate a seeded random sample of this many control pairs",
                                       default=None)
    target_layers: list[int] = _help("layer(s) whose embeddings the loss is computed on (loss averaged); "
                                     "the paper: 2", default_factory=lambda: [2])
    layer_choice: str = _help("how the target layer(s) were chosen: given (typed, or the paper's 2) | scan (a layer "
                              "scan of the same trained pairs suggested it: the trained set's result at that layer is "
                              "double-dipped) | scan-held-out (chosen on half of the headwords, checked on the other "
                              "half)", default="given")
    pooling: str = _help("pooling of the training loss: mean (paper) | mean_words | mean_no_first | last | mean_sink",
                         default="mean")
    protocols: list[str] = _help("evaluation protocols measured after training, the first one headlines: studio, "
                                 "paper-text (the paper's text), paper-code (the authors' script), paper-code-fp4 "
                                 "(the script with its FP4 base)", default_factory=lambda: list(DEFAULT_PROTOCOLS))
    eval_layer: int | str = _help("evaluation layer of the studio protocol: paper (= L-1, the paper's 'layer 31'), "
                                  "target (the training layer), last (L), or a number; kept as written and resolved "
                                  "per model at run time", default="paper")
    eval_pooling: str = _help("pooling of the studio protocol's evaluation (default mean_sink: a sink token before "
                              "every word, left out of the average, whatever the tokenizer)", default="mean_sink")
    analysis_precision: str = _help("arithmetic of every before/after measurement: float32 (default; per-pair "
                                    "values stable) or compute (the model's dtype, with a precision check)",
                                    default="float32")
    method: str = _help("what learns: lora (the paper: LoRA adapters) | full (the weights of the blocks the loss "
                        "reaches, 1..deepest target layer, themselves; the baseline)", default="lora")
    lora_r: int = _help("LoRA rank", default=16)
    lora_alpha: int = _help("LoRA alpha (scaling = alpha / r)", default=32)
    lora_dropout: float = _help("dropout on the LoRA input", default=0.05)
    target_modules: list[str] | None = _help("modules that get adapters (default per architecture: "
                                             "q_proj, v_proj)", default=None)
    adapter_blocks: str = _help("which blocks get adapters: all (paper) | up_to_target | early (first half) | "
                                "late (second half) | a list such as 1-4,8 (blocks numbered from 1)",
                                default="all")
    loss: str = _help("triplet (paper: hardest in-batch negative with margin) | infonce", default="triplet")
    negatives: str = _help("negatives of the loss: not-translations (any other English word of the batch that is none "
                           "of the Swahili word's translations; default) | any-other (any other row of the batch, even "
                           "a second translation of the same word, as the authors' loss did)",
                           default="not-translations")
    pairing: str = _help("what the loss pairs each Swahili word with: translations (TLI) | deranged (the placebo: "
                         "an English word that is none of its translations, drawn with the run's seed; evaluation "
                         "is on the true pairs as always)", default="translations")
    margin: float = _help("triplet margin", default=0.4)
    temperature: float = _help("InfoNCE temperature", default=0.05)
    learning_rate: float = _help("AdamW learning rate", default=2e-4)
    warmup_steps: int = _help("linear warm-up steps, then linear decay to 0", default=50)
    epochs: int = _help("passes over the trained pairs; the adapter is saved after each", default=5)
    batch_size: int = _help("pairs per step (in-batch negatives need at least 2)", default=8)
    weight_decay: float = _help("AdamW weight decay (not published; torch's default)", default=0.01)
    grad_clip: float | None = _help("clip the gradient norm; none = off (the paper does not say; the authors' "
                                    "script does not clip; 1.0 is the transformers Trainer's default)", default=None)
    seed: int = _help("seed for LoRA initialisation, dropout and batch order", default=42)
    early_exit: bool = _help("stop the forward after the deepest target layer (same loss, faster)",
                             default=True)
    allow_overlap: bool = _help("accept a pair that is in both the trained and the control set (otherwise an "
                                "error; a shared Swahili word with different translations is only a warning)",
                                default=False)

    def __post_init__(self):
        check_settings(self)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TLIConfig":
        if not isinstance(d, dict):
            raise TLIError("a TLI config must be a mapping of settings")
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise TLIError(f"unknown setting(s) in the config: {', '.join(sorted(unknown))}")
        model = d.pop("model", {})
        if not isinstance(model, (ModelSpec, dict)):
            raise TLIError("the config's model must be a mapping of model settings")
        d["model"] = model if isinstance(model, ModelSpec) else ModelSpec.from_dict(model or {})
        if "target_layers" in d:
            tl = d["target_layers"]
            if not isinstance(tl, (int, list, tuple)):
                raise TLIError(f"target_layers must be a layer number or a list of them, not {tl!r}")
            d["target_layers"] = [tl] if isinstance(tl, int) else list(tl)
        if "eval_layer" in d and d["eval_layer"] is None:  # configs written before symbolic layers: the paper's
            d["eval_layer"] = "paper"
        if isinstance(d.get("protocols"), str):
            d["protocols"] = [p.strip() for p in d["protocols"].split(",") if p.strip()]
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:  # a value of a type no check expected (e.g. a list for a number)
            raise TLIError(f"a setting in the config has the wrong type: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "TLIConfig":
        return cls.from_dict(read_config_file(path))

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


def read_config_file(path: str | Path) -> dict:
    """The settings in a JSON or YAML file (e.g. a run's config.json), as a mapping."""
    p = Path(path)
    if not p.is_file():
        raise TLIError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml and json raise different types; both mean a bad file
        raise TLIError(f"cannot read config file {p}: {exc}") from None
    if not isinstance(data, dict):
        raise TLIError(f"config file {p} must hold a mapping of settings")
    return data


# --------------------------------------------------------------------------- checks without a model

def _whole(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise TLIError(f"{what} must be a whole number (got {value!r})")
    return int(value)


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TLIError(f"{what} must be a number (got {value!r})")
    if not math.isfinite(value):
        raise TLIError(f"{what} must be a finite number (got {value!r})")
    return float(value)


def check_settings(c: TLIConfig) -> None:
    """Raise TLIError for settings that cannot work on any model, naming the setting the user typed."""
    if _whole(c.lora_r, "LoRA rank") < 1:
        raise TLIError(f"LoRA rank must be at least 1 (got {c.lora_r})")
    if not _number(c.lora_alpha, "LoRA alpha") > 0:
        raise TLIError(f"LoRA alpha must be positive (got {c.lora_alpha})")
    if not 0 <= _number(c.lora_dropout, "LoRA dropout") < 1:
        raise TLIError(f"LoRA dropout must be in [0, 1) (got {c.lora_dropout})")
    if c.method not in METHODS:
        raise TLIError(f"unknown training method {c.method!r}; use one of {', '.join(METHODS)}")
    if c.loss not in LOSSES:
        raise TLIError(f"unknown loss {c.loss!r}; use one of {', '.join(LOSSES)}")
    if c.negatives not in NEGATIVES:
        raise TLIError(f"unknown negatives {c.negatives!r}; use one of {', '.join(NEGATIVES)}")
    if c.layer_choice not in LAYER_CHOICES:
        raise TLIError(f"unknown layer choice {c.layer_choice!r}; use one of {', '.join(LAYER_CHOICES)}")
    if c.pairing not in PAIRINGS:
        raise TLIError(f"unknown pairing {c.pairing!r}; use one of {', '.join(PAIRINGS)}")
    if _whole(c.batch_size, "batch size") < 2:
        raise TLIError(f"batch size {c.batch_size} leaves no in-batch negatives: the {c.loss} loss "
                       f"compares each Swahili word with the other English words in its batch; use 2 or more")
    if _whole(c.epochs, "epochs") < 1:
        raise TLIError(f"epochs must be at least 1 (got {c.epochs})")
    if not _number(c.learning_rate, "learning rate") > 0:
        raise TLIError(f"learning rate must be positive (got {c.learning_rate})")
    if _whole(c.warmup_steps, "warm-up steps") < 0:
        raise TLIError(f"warm-up steps cannot be negative (got {c.warmup_steps})")
    if _number(c.margin, "triplet margin") < 0:
        raise TLIError(f"triplet margin cannot be negative (got {c.margin})")
    if c.loss == "infonce" and not _number(c.temperature, "InfoNCE temperature") > 0:
        raise TLIError(f"InfoNCE temperature must be positive (got {c.temperature})")
    if _number(c.weight_decay, "weight decay") < 0:
        raise TLIError(f"weight decay cannot be negative (got {c.weight_decay})")
    if c.grad_clip is not None and not _number(c.grad_clip, "gradient clipping") > 0:
        raise TLIError(f"gradient clipping must be positive or none (got {c.grad_clip})")
    if not 0 <= _whole(c.seed, "seed") < 2**32:  # numpy's seeds are 32-bit: anything else fails mid-run
        raise TLIError(f"seed must be a whole number from 0 to 4294967295 (got {c.seed})")
    if c.pooling not in POOLINGS:
        raise TLIError(f"unknown pooling {c.pooling!r}; use one of {', '.join(POOLINGS)}")
    if not c.target_layers:
        raise TLIError("at least one target layer is needed")
    for k in c.target_layers:
        _whole(k, "target layer")
    c.eval_layer = check_eval_layer(c.eval_layer)
    if c.eval_pooling not in POOLINGS:
        raise TLIError(f"unknown evaluation pooling {c.eval_pooling!r}; use one of {', '.join(POOLINGS)}")
    if c.analysis_precision not in PRECISIONS:
        raise TLIError(f"unknown analysis precision {c.analysis_precision!r}; use one of {', '.join(PRECISIONS)}")
    if not c.protocols:
        raise TLIError(f"at least one evaluation protocol is needed ({', '.join(PROTOCOLS)})")
    for name in c.protocols:
        get_protocol(name)
    if len(set(c.protocols)) != len(c.protocols):
        raise TLIError(f"evaluation protocols listed twice: {', '.join(c.protocols)}")
    for name, n in (("trained", c.trained_subset), ("control", c.control_subset)):
        if n is not None and _whole(n, f"{name} subset") < 2:
            raise TLIError(f"a {name} subset needs at least 2 pairs (got {n})")


def total_steps(n_pairs: int, batch_size: int, epochs: int) -> int:
    """Optimiser steps of a run (what the progress bar counts to)."""
    per_epoch = math.ceil(n_pairs / batch_size)
    if per_epoch > 1 and n_pairs % batch_size == 1:
        per_epoch -= 1
    return per_epoch * epochs


# --------------------------------------------------------------------------- resolution against a model

@dataclass(frozen=True)
class Resolved:
    """The model-dependent settings of a run, as numbers: what the worker actually uses."""

    num_layers: int
    target_layers: list[int]
    eval_layer: int  # the headline protocol's
    protocol_layers: dict[str, int]  # every evaluated protocol's evaluation layer
    adapter_blocks: list[int]  # blocks (1..L) that get LoRA adapters
    learning_blocks: list[int]  # of those, the ones a loss on the target layers can reach
    target_modules: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def adapter_block_list(spec: str, deepest_target: int, num_layers: int) -> list[int]:
    """Blocks (numbered 1..L, block k produces layer k) named by an adapter-placement setting."""
    spec = str(spec).strip()
    half = max(1, num_layers // 2)
    if spec == "all":
        return list(range(1, num_layers + 1))
    if spec == "up_to_target":
        return list(range(1, deepest_target + 1))
    if spec == "early":
        return list(range(1, half + 1))
    if spec == "late":
        return list(range(half + 1, num_layers + 1))
    return parse_blocks(spec, num_layers)


def resolve(config: TLIConfig, shape: ModelShape, n_trained: int | None = None,
            n_control: int | None = None) -> tuple[Resolved, list[str]]:
    """The config's settings resolved against a model (and pair-set sizes); never changes ``config``.

    Raises TLIError for settings that cannot work on this model; returns warnings for ones that
    are unusual.
    """
    warnings: list[str] = []
    n = shape.num_layers
    targets = sorted({resolve_layer(k, n, "target layer") for k in config.target_layers})
    if 0 in targets:
        raise TLIError("target layer 0 is the input embedding table: LoRA adapters on attention "
                       "cannot change it; use layer 1 or deeper (the paper: 2)")
    protocol_layers = {name: resolve_eval_layer(get_protocol(name, config.eval_layer).layer, n, targets)
                       for name in config.protocols}
    deepest = max(targets)
    blocks = adapter_block_list(config.adapter_blocks, deepest, n)
    learning = [b for b in blocks if b <= deepest]
    if not learning:
        raise TLIError(f"no adapter sits in blocks 1..{deepest}: a loss on layer {deepest} cannot reach "
                       f"adapters in blocks {blocks[0]}..{blocks[-1]}, so nothing would train")
    idle = len(blocks) - len(learning)
    if config.method == "full":
        warnings.append(f"full fine-tuning: the weights of blocks {learning[0]}..{learning[-1]} themselves train "
                        f"(in float32); LoRA settings do not apply")
    elif idle:
        warnings.append(f"{idle} of {len(blocks)} adapter blocks lie beyond target layer {deepest}: "
                        f"they get no gradient and stay at zero (only blocks 1..{deepest} learn)")
    modules = list(config.target_modules or default_lora_targets(shape.model_type))
    if shape.linear_modules is not None:
        missing = [m for m in modules if m not in shape.linear_modules]
        if missing:
            raise TLIError(f"target module(s) {', '.join(missing)} do not exist in this model's blocks; "
                           f"its linear layers are {', '.join(sorted(shape.linear_modules))}")
    if n_trained is not None:
        if n_trained < 2:
            raise TLIError(f"the trained set has {n_trained} pair(s); at least 2 are needed")
        used = min(config.trained_subset or n_trained, n_trained)
        if used < config.batch_size:
            warnings.append(f"the trained set ({used} pairs) is smaller than one batch "
                            f"({config.batch_size}); each step uses all of it")
        steps = total_steps(used, config.batch_size, config.epochs)
        if config.warmup_steps >= steps:
            warnings.append(f"{config.warmup_steps} warm-up steps on a run of {steps} steps: the learning rate never "
                            f"reaches {config.learning_rate:g} (the paper: 50 warm-up steps of 390)")
        elif config.warmup_steps > steps / 2:
            warnings.append(f"{config.warmup_steps} warm-up steps are more than half of the run's {steps} steps")
    if config.learning_rate > 1e-2:
        warnings.append(f"learning rate {config.learning_rate:g} is far above LoRA's usual range (the paper: 2e-4)")
    if n_control is not None and n_control == 0:
        raise TLIError("the control set is empty: TLI's claim is about unseen words; give a control file")
    return Resolved(num_layers=n, target_layers=targets, eval_layer=protocol_layers[config.protocols[0]],
                    protocol_layers=protocol_layers, adapter_blocks=blocks, learning_blocks=learning,
                    target_modules=modules), warnings
