"""PEFT LoRA adapters: check one against a model before touching it, load it safely, look through it.

The dashboard's model is loaded once per server and must not be changed by a run. An adapter is
checked first (plain LoRA only: its settings, its target modules against the model's decoder
blocks, and the shapes of its tensors, reading only the safetensors header), then injected under
the model's lock with a config built from the checked settings alone; if PEFT still fails half-way,
every injected layer and wrapper is taken out again, so the model is exactly as it was.
Only safetensors adapters are read (no pickle).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path

from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from safetensors import safe_open

from .anatomy import linear_shapes, model_lock
from .errors import TLIError

WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<side>[AB])(?:\.[^.]+)?\.weight$")


# Settings of a plain LoRA adapter that TLI Studio reads and checks; every other LoRA setting must be left at
# "off" (null, false, empty), because it changes the model beyond the LoRA layers (layer_replication adds blocks,
# modules_to_save wraps lm_head, trainable tokens, DoRA, a PiSSA/OLoRA init that rewrites the base weights ...).
_CHECKED = {"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "r", "lora_alpha",
            "lora_dropout", "target_modules", "layers_to_transform", "layers_pattern", "bias", "fan_in_fan_out",
            "use_rslora", "init_lora_weights"}
# Bookkeeping PEFT writes that has no effect on the loaded weights (the adapter is loaded with a config built here).
_IGNORED = {"auto_mapping", "peft_version", "megatron_core", "qalora_group_size", "runtime_config"}
_PLAIN_INITS = (True, False, "gaussian")
MAX_CONFIG_BYTES = 1 << 20


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_settings(config: dict, where: Path) -> None:
    """Refuse, with one line, anything in a LoRA config that is not plain LoRA with well-typed values."""
    def refuse(what: str):
        raise TLIError(f"{where}: {what}; TLI Studio loads plain LoRA on the decoder blocks' linear layers only")

    for key, value in config.items():
        if key in _CHECKED or key in _IGNORED or value in (None, False, [], {}, ""):
            continue
        refuse(f"the adapter sets {key} = {_short(value)}, which changes the model beyond LoRA layers")
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        refuse(f"task_type {_short(config['task_type'])} adds a task head (only CAUSAL_LM)")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= 65536:
        refuse(f"r = {_short(r)} is not a positive whole number")
    alpha = config.get("lora_alpha", r)
    if not _number(alpha) or alpha <= 0:
        refuse(f"lora_alpha = {_short(alpha)} is not a positive number")
    dropout = config.get("lora_dropout", 0.0)
    if dropout is not None and (not _number(dropout) or not 0 <= dropout < 1):
        refuse(f"lora_dropout = {_short(dropout)} is not a number in [0, 1)")
    modules = config.get("target_modules")
    if isinstance(modules, str):
        modules = [modules] if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", modules) else None
    if not isinstance(modules, list) or not modules or not all(isinstance(m, str) for m in modules):
        refuse(f"target_modules = {_short(config.get('target_modules'))} is not a list of module names "
               f"(patterns and 'all-linear' are not read)")
    layers = config.get("layers_to_transform")
    layers = [layers] if isinstance(layers, int) and not isinstance(layers, bool) else layers
    if layers is not None and (not isinstance(layers, list) or not layers or
                               not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in layers)):
        refuse(f"layers_to_transform = {_short(config.get('layers_to_transform'))} is not a list of block numbers")
    pattern = config.get("layers_pattern")
    if pattern is not None and not all(isinstance(p, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p)
                                       for p in (pattern if isinstance(pattern, list) else [pattern])):
        refuse(f"layers_pattern = {_short(pattern)} is not the name of the decoder's list of blocks")
    if config.get("bias", "none") != "none":
        refuse(f"bias = {_short(config.get('bias'))} trains the base model's biases (only 'none')")
    for key in ("inference_mode", "fan_in_fan_out", "use_rslora"):
        if not isinstance(config.get(key, False), bool):
            refuse(f"{key} = {_short(config.get(key))} is not true or false")
    if config.get("init_lora_weights", True) not in _PLAIN_INITS:
        refuse(f"init_lora_weights = {_short(config.get('init_lora_weights'))} rewrites the base weights")
    for key in ("base_model_name_or_path", "revision"):
        if not isinstance(config.get(key), (str, type(None))):
            refuse(f"{key} = {_short(config.get(key))} is not text")


def read_adapter_config(adapter_dir: str | Path) -> dict:
    """The adapter's config after checking it is plain, well-typed LoRA (no model needed); TLIError otherwise."""
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise TLIError(f"no PEFT adapter in {adapter_dir} (no adapter_config.json)")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise TLIError(f"{path} is over {MAX_CONFIG_BYTES >> 20} MiB; an adapter config is a few lines of JSON")
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TLIError(f"{path} is not valid JSON: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise TLIError(f"{path} is nested too deeply to be an adapter config") from None
    except OSError as exc:
        raise TLIError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(config, dict):
        raise TLIError(f"{path} holds a JSON {type(config).__name__}, not the object PEFT writes; "
                       f"TLI Studio reads PEFT LoRA adapters")
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise TLIError(f"{adapter_dir} is not a LoRA adapter (peft_type {_short(config.get('peft_type'))}); "
                       f"TLI Studio reads PEFT LoRA adapters")
    _check_settings(config, adapter_dir)
    return config


def lora_config(config: dict):
    """The ``LoraConfig`` PEFT loads the adapter with: built from the checked settings only."""
    from peft import LoraConfig

    layers = config.get("layers_to_transform")
    return LoraConfig(r=config["r"], lora_alpha=config.get("lora_alpha", config["r"]),
                      lora_dropout=float(config.get("lora_dropout") or 0.0),
                      target_modules=list(_targets(config)), layers_to_transform=layers,
                      layers_pattern=config.get("layers_pattern") if layers is not None else None, bias="none",
                      fan_in_fan_out=bool(config.get("fan_in_fan_out", False)),
                      use_rslora=bool(config.get("use_rslora", False)), task_type=config.get("task_type"),
                      base_model_name_or_path=config.get("base_model_name_or_path"),
                      revision=config.get("revision"), inference_mode=True)


def _targets(config: dict) -> list[str]:
    modules = config["target_modules"]
    return [modules] if isinstance(modules, str) else list(modules)


def _block_linears(shapes: dict[str, tuple[int, int]]) -> tuple[set[str], int]:
    """(short names of the linear layers inside numbered decoder blocks, how many blocks) from module paths."""
    names, blocks = set(), 0
    for path in shapes:
        index = next((int(part) for part in path.split(".") if part.isdigit()), None)
        if index is not None:
            names.add(path.rsplit(".", 1)[-1])
            blocks = max(blocks, index + 1)
    return names, blocks


def check_adapter(adapter_dir: str | Path, shapes: dict[str, tuple[int, int]]) -> dict:
    """The adapter's config, after checking that it is plain LoRA on the model's block linears and that every
    tensor fits a linear layer of the model.

    ``shapes`` comes from ``anatomy.linear_shapes``. Raises TLIError with one line otherwise; nothing
    is loaded into any model.
    """
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    base = config.get("base_model_name_or_path") or "unknown"
    supported, blocks = _block_linears(shapes)
    unknown = [m for m in _targets(config) if m not in supported]
    if unknown:
        raise TLIError(f"the adapter targets {', '.join(map(repr, unknown))}, which this model's decoder blocks do "
                       f"not have as linear layers (they have: {', '.join(sorted(supported))}; adapter base: {base})")
    layers = config.get("layers_to_transform")
    layers = [layers] if isinstance(layers, int) else layers or []
    if any(b >= blocks for b in layers):
        raise TLIError(f"the adapter's layers_to_transform {layers} names blocks this model lacks (it has "
                       f"{blocks}, numbered 0..{blocks - 1} there; adapter base: {base})")
    weights = adapter_dir / WEIGHTS
    if not weights.is_file():
        other = ", ".join(p.name for p in adapter_dir.glob("adapter_model.*")) or "none"
        raise TLIError(f"{adapter_dir} has no {WEIGHTS} (found: {other}); TLI Studio reads safetensors adapters "
                       f"only, never pickled .bin files")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            tensors = {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}
    except Exception as exc:  # a truncated or foreign file: safetensors raises its own types
        raise TLIError(f"cannot read {weights}: {str(exc).splitlines()[0]}") from None
    r = config.get("r")
    found = 0
    for key, shape in tensors.items():
        m = _KEY.match(key)
        if not m:
            raise TLIError(f"{weights} holds {key}, which is not a LoRA weight; TLI Studio loads only plain LoRA "
                           f"adapters")
        module = m.group("module")
        if module not in shapes:
            raise TLIError(f"the adapter has weights for {module}, which this model does not have "
                           f"(adapter base: {base})")
        if module.rsplit(".", 1)[-1] not in _targets(config):
            raise TLIError(f"the adapter has weights for {module}, which its target_modules do not name")
        fan_in, fan_out = shapes[module]
        want = (r, fan_in) if m.group("side") == "A" else (fan_out, r)
        if tuple(shape) != want:
            raise TLIError(f"the adapter does not fit this model: {key} has shape {list(shape)}, the model needs "
                           f"{list(want)} (adapter base: {base})")
        found += 1
    if not found:
        raise TLIError(f"{weights} holds no LoRA weights")
    return config


def strip_adapters(model) -> int:
    """Take every injected LoRA layer, and every wrapper PEFT puts around whole modules (modules_to_save,
    trainable tokens), out of ``model``: the original modules go back. Returns how many."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    removed = 0
    for kind, original in ((AuxiliaryTrainingWrapper, lambda m: m.original_module),
                           (BaseTunerLayer, lambda m: m.get_base_layer())):
        while injected := [(name, m) for name, m in base.named_modules() if isinstance(m, kind)]:
            name, module = injected[0]  # outermost first; the tree changes with each replacement
            parent_name, _, child = name.rpartition(".")
            parent = base.get_submodule(parent_name) if parent_name else base
            setattr(parent, child, original(module))
            removed += 1
    if hasattr(base, "peft_config"):
        del base.peft_config
    return removed


def load_adapter(model, adapter_dir: str | Path) -> PeftModel:
    """``PeftModel.from_pretrained`` after :func:`check_adapter`; on any failure the model is left as it was."""
    config = lora_config(check_adapter(adapter_dir, linear_shapes(model)))
    with model_lock(model):
        try:  # PEFT gets the checked settings only, never the file's other keys
            tuned = PeftModel.from_pretrained(model, str(adapter_dir), config=config)
        except Exception as exc:
            strip_adapters(model)
            raise TLIError(f"the adapter in {adapter_dir} does not fit this model: "
                           f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    tuned.eval()
    return tuned


@contextlib.contextmanager
def temporary_adapter(model, adapter_dir: str | Path):
    """``with temporary_adapter(model, run.adapter_dir) as tuned: ...`` -- tuned is a PeftModel.

    The adapter is injected under the model's lock, used, and removed again with PEFT's
    ``unload()`` (no merge): the base weights are never touched, and no other forward can run
    while it is attached.
    """
    with model_lock(model):
        tuned = load_adapter(model, adapter_dir)
        try:
            yield tuned
        finally:
            tuned.unload()


@contextlib.contextmanager
def merged_adapter(peft_model):
    """The adapter merged into the base weights as ``merge_and_unload`` does (re-quantized when the base is
    4-bit), for the duration of the block; the base weights are put back exactly afterwards."""
    saved = []
    with model_lock(peft_model):
        try:
            for layer in [m for m in peft_model.modules() if isinstance(m, BaseTunerLayer)]:
                base = layer.get_base_layer()
                saved.append((layer, base, base.weight, base.weight.data.clone(), list(layer.merged_adapters)))
                layer.merge()
            yield peft_model
        finally:
            for layer, base, weight, data, merged in reversed(saved):
                base.weight = weight  # bitsandbytes' merge replaces the parameter; a plain one is changed in place
                weight.data = data
                layer.merged_adapters = merged
