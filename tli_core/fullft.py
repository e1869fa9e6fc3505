"""Full fine-tuning of the target blocks: TLI's baseline beside LoRA (same loss, early exit and evaluation).

The blocks a loss on the target layer can reach (1..k) are made trainable themselves: every weight
of those blocks -- attention, MLP, both norms. A 4-bit (or bf16) block is dequantized to float32
first: AdamW's updates at the paper's learning rate (2e-4) are below bfloat16's resolution for
typical weights, so the trained blocks keep float32 weights and compute in float32, their input
cast up and their output cast back to the model's dtype. Everything else stays frozen and
quantized. The trained blocks are saved as one safetensors file (``full_ft/blocks.safetensors``)
that the tool re-applies exactly; on leaving, the model gets its original blocks back.

Memory (Llama-3-8B, two blocks): 2 x 218M = 436M weights; float32 weights, gradients and AdamW's
two moments are 4 x 1.74 GB = 7.0 GB, next to ~5.7 GB for the rest in NF4 and the activations of
a batch of 16 words: about 13 GB, inside a 16 GB GPU (bfloat16 weights and gradients would save
1.7 GB but lose the updates).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .anatomy import decoder_parts, model_lock
from .errors import TLIError

WEIGHTS = "blocks.safetensors"
META = "full_ft.json"


def _dequantized(module) -> torch.nn.Linear:
    """A float32 nn.Linear with the same weights as a bitsandbytes 4-bit layer."""
    import bitsandbytes as bnb

    weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
    linear = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                             device=weight.device, dtype=torch.float32)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if module.bias is not None:
            linear.bias.copy_(module.bias.float())
    return linear


class FullBlocks:
    """The blocks ``blocks`` (numbered 1..L) of ``model`` made trainable in float32; ``close()`` undoes it."""

    def __init__(self, model, blocks: list[int]):
        self.model, self.blocks = model, list(blocks)
        _, self.layers, _ = decoder_parts(model)
        self._swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
        self._saved: dict[int, dict[str, torch.Tensor]] = {}
        self._hooks = []
        self._dtype = model.get_input_embeddings().weight.dtype
        with model_lock(model):
            for b in self.blocks:
                self._open(b)

    def _open(self, b: int) -> None:
        block = self.layers[b - 1]
        self._saved[b] = {k: v.detach().clone() for k, v in block.state_dict().items()}
        for name, module in list(block.named_modules()):
            kind = type(module).__name__
            if kind == "Linear8bitLt":
                raise TLIError("full fine-tuning of int8 blocks is not supported; load the model in nf4, bf16 or "
                               "fp32")
            if kind in ("Linear4bit", "LinearNF4", "LinearFP4"):
                parent_name, _, child = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                self._swapped.append((parent, child, module))
                setattr(parent, child, _dequantized(module))
        block.float()
        for p in block.parameters():
            p.requires_grad_(True)
        if self._dtype != torch.float32:  # the block computes in float32 between the model's own dtype
            self._hooks.append(block.register_forward_pre_hook(self._cast_in, with_kwargs=True))
            self._hooks.append(block.register_forward_hook(self._cast_out))

    @staticmethod
    def _cast_in(module, args, kwargs):
        hidden = args[0] if args and torch.is_tensor(args[0]) else kwargs.get("hidden_states")
        # the block hands back the dtype it was given: bf16 in training and bf16 analysis, float32 inside a float32
        # analysis (rounding its output to the model's dtype there made 'after' less exact than 'before')
        module._tli_out_dtype = hidden.dtype if torch.is_tensor(hidden) else None
        args = tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
        if torch.is_tensor(kwargs.get("hidden_states")):
            kwargs["hidden_states"] = kwargs["hidden_states"].float()
        return args, kwargs

    def _cast_out(self, module, args, output):
        dtype = getattr(module, "_tli_out_dtype", None) or self._dtype
        if isinstance(output, tuple):
            return (output[0].to(dtype), *output[1:])
        return output.to(dtype)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for b in self.blocks for p in self.layers[b - 1].parameters()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"layers.{b - 1}.{k}": v.detach().float().contiguous().cpu()
                for b in self.blocks for k, v in self.layers[b - 1].state_dict().items()}

    def write(self, directory: Path, base_model: str = "") -> None:
        """The trained blocks and what they belong to, into ``directory`` (the run makes that all or nothing)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), str(directory / WEIGHTS))
        (directory / META).write_text(json.dumps({"blocks": self.blocks, "dtype": "float32", "base_model": base_model,
                                                  "format": "TLI Studio full fine-tuning of blocks"}, indent=1))

    def load(self, source: Path) -> None:
        """Re-apply saved blocks (the same blocks must have been opened)."""
        source = Path(source)
        meta = json.loads((source / META).read_text())
        if sorted(meta["blocks"]) != sorted(self.blocks):
            raise TLIError(f"{source} holds blocks {meta['blocks']}, not {self.blocks}")
        state = load_file(str(source / WEIGHTS))
        with torch.no_grad():
            for b in self.blocks:
                prefix = f"layers.{b - 1}."
                block_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                missing = self.layers[b - 1].load_state_dict(block_state, strict=True)
                del missing

    def close(self) -> None:
        """The original blocks back, exactly (quantized modules swapped back, plain weights restored)."""
        with model_lock(self.model):
            for h in self._hooks:
                h.remove()
            for parent, child, original in reversed(self._swapped):
                setattr(parent, child, original)
            for b in self.blocks:
                block, saved = self.layers[b - 1], self._saved[b]
                for name, p in list(block.named_parameters()):
                    if type(p).__name__ in ("Params4bit", "Int8Params"):
                        continue  # a quantized weight: its original module is back, untouched
                    module_name, _, attr = name.rpartition(".")
                    module = block.get_submodule(module_name) if module_name else block
                    setattr(module, attr, torch.nn.Parameter(saved[name], requires_grad=False))
            self._swapped, self._hooks = [], []


def has_full_ft(path: Path) -> bool:
    return (Path(path) / WEIGHTS).is_file() and (Path(path) / META).is_file()


def saved_blocks(path: Path) -> list[int]:
    return json.loads((Path(path) / META).read_text())["blocks"]
