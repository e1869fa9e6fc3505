"""Where things are inside a causal LM: its decoder blocks, final norm, input device, LoRA targets.

Works on a plain transformers model and on one wrapped by PEFT. Block k (numbered from 1)
produces hidden state k (see ``layers.py``).
"""

from __future__ import annotations

import threading
import weakref

import torch

from .errors import TLIError

# LoRA target modules per architecture; the paper's q_proj/v_proj wherever those exist.
LORA_TARGETS = {
    "phi3": ["qkv_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
}
DEFAULT_LORA_TARGETS = ["q_proj", "v_proj"]

_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def default_lora_targets(model_type: str) -> list[str]:
    return list(LORA_TARGETS.get(model_type, DEFAULT_LORA_TARGETS))


def decoder_parts(model) -> tuple[torch.nn.Module, torch.nn.ModuleList, torch.nn.Module]:
    """(decoder module, its list of blocks, its final norm) for a causal LM, PEFT-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", base)
    blocks = getattr(decoder, "layers", None)
    norm = getattr(decoder, "norm", None)
    if not isinstance(blocks, torch.nn.ModuleList) or norm is None:
        raise TLIError(f"unsupported architecture {type(base).__name__}: TLI Studio needs a decoder with "
                       f"`.layers` and a final `.norm` (Llama, Mistral, Qwen2, Gemma, Phi-3 ... all have them)")
    return decoder, blocks, norm


def num_layers(model) -> int:
    """Decoder blocks L; hidden states are numbered 0..L."""
    return len(decoder_parts(model)[1])


def input_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


def model_lock(model) -> threading.RLock:
    """One forward at a time per model: hooks (and adapters) are installed on shared modules.

    Keyed by the decoder, so a PEFT wrapper and the model it wraps share one lock.
    """
    decoder = decoder_parts(model)[0]
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(decoder, threading.RLock())


def linear_shapes(model) -> dict[str, tuple[int, int]]:
    """Module path -> (in_features, out_features) of every linear layer (works on a meta-device skeleton).

    Taken before any adapter is injected: PEFT's LoRA wrappers are not ``nn.Linear`` themselves.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {name: (int(m.in_features), int(m.out_features)) for name, m in base.named_modules()
            if isinstance(m, torch.nn.Linear)}


def linear_module_names(model) -> set[str]:
    """Short names of the linear layers inside the decoder blocks (q_proj, v_proj, mlp.up_proj -> up_proj ...)."""
    _, blocks, _ = decoder_parts(model)
    names = set()
    for name, module in blocks[0].named_modules():
        if name and (isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__):
            names.add(name.rsplit(".", 1)[-1])
    return names
