"""PEFT LoRA adapters: check one against a model before touching it, load it safely, look through it.

The dashboard's model is loaded once per server and must not be changed by a run. An adapter is
checked first (its config and the shapes of its tensors against the model's linear layers,
reading only the safetensors header), then injected under the model's lock; if PEFT still fails
half-way, every injected LoRA layer is taken out again, so the model is exactly as it was.
Only safetensors adapters are read (no pickle).
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open

from .anatomy import linear_shapes, model_lock
from .errors import TLIError

WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<side>[AB])(?:\.[^.]+)?\.weight$")


def read_adapter_config(adapter_dir: str | Path) -> dict:
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise TLIError(f"no PEFT adapter in {adapter_dir} (no adapter_config.json)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TLIError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise TLIError(f"{adapter_dir} is not a LoRA adapter (peft_type {config.get('peft_type')!r}); "
                       f"TLI Studio reads PEFT LoRA adapters")
    return config


def check_adapter(adapter_dir: str | Path, shapes: dict[str, tuple[int, int]]) -> dict:
    """The adapter's config, after checking that every tensor fits a linear layer of the model.

    ``shapes`` comes from ``anatomy.linear_shapes``. Raises TLIError with one line otherwise; nothing
    is loaded into any model.
    """
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
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
            continue
        module = m.group("module")
        if module not in shapes:
            raise TLIError(f"the adapter has weights for {module}, which this model does not have "
                           f"(adapter base: {config.get('base_model_name_or_path') or 'unknown'})")
        fan_in, fan_out = shapes[module]
        want = (r, fan_in) if m.group("side") == "A" else (fan_out, r)
        if tuple(shape) != want:
            raise TLIError(f"the adapter does not fit this model: {key} has shape {list(shape)}, the model needs "
                           f"{list(want)} (adapter base: {config.get('base_model_name_or_path') or 'unknown'})")
        found += 1
    if not found:
        raise TLIError(f"{weights} holds no LoRA weights")
    return config


def strip_adapters(model) -> int:
    """Take every injected LoRA layer out of ``model`` (the base layers go back); returns how many."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    injected = [(name, m) for name, m in base.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in injected:
        parent_name, _, child = name.rpartition(".")
        parent = base.get_submodule(parent_name) if parent_name else base
        setattr(parent, child, module.get_base_layer())
    if hasattr(base, "peft_config"):
        del base.peft_config
    return len(injected)


def load_adapter(model, adapter_dir: str | Path) -> PeftModel:
    """``PeftModel.from_pretrained`` after :func:`check_adapter`; on any failure the model is left as it was."""
    check_adapter(adapter_dir, linear_shapes(model))
    with model_lock(model):
        try:
            tuned = PeftModel.from_pretrained(model, str(adapter_dir))
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
