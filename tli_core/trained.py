"""A model with a run's trained weights, for as long as a block of code needs it, then exactly the base again.

The weights are a LoRA adapter (attached, or merged into the base as ``merge_and_unload`` would)
or fully fine-tuned blocks; either way the caller gets a model to run forwards on, and the shared
base model is given back unchanged.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from .adapters import load_adapter, merged_adapter
from .anatomy import model_lock
from .errors import TLIError
from .fullft import FullBlocks, has_full_ft, saved_blocks


def is_adapter(weights_dir: Path) -> bool:
    return (Path(weights_dir) / "adapter_config.json").is_file()


@contextlib.contextmanager
def trained_model(model, weights_dir: str | Path, merged: bool = False):
    """``with trained_model(lm.model, run.weights_path()) as tuned: ...``

    Holds the model's lock throughout: no other forward sees the trained weights, or half of them.
    """
    weights_dir = Path(weights_dir)
    with model_lock(model):
        yield from _trained(model, weights_dir, merged)


def _trained(model, weights_dir: Path, merged: bool):
    if is_adapter(weights_dir):
        tuned = load_adapter(model, weights_dir)
        try:
            with merged_adapter(tuned) if merged else contextlib.nullcontext():
                yield tuned
        finally:
            tuned.unload()
    elif has_full_ft(weights_dir):
        blocks = FullBlocks(model, saved_blocks(weights_dir))
        try:
            blocks.load(weights_dir)
            yield model
        finally:
            blocks.close()
    else:
        raise TLIError(f"no trained weights in {weights_dir} (neither a PEFT adapter nor fine-tuned blocks)")
