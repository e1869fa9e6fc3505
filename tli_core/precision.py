"""Analysis precision: the arithmetic in which similarities are measured, kept apart from training's.

Llama-style models carry a few massive activations (BOS / first-token states, a handful of
dimensions); in bfloat16 they swamp a single word's signal in deep layers. Measured on the demo
model in NF4 with the authors' pairs: a pair's cosine moves by up to 0.79 at layer 29 between
bf16 and fp32 compute, while layer means agree to ~2e-3. Analyses therefore run in float32 by
default -- on the *same* quantized weights: the 4-bit layers dequantize to float32 and the
embeddings and norms are cast up for the duration of the pass, then cast back exactly
(bf16 -> fp32 -> bf16 is lossless). Training keeps the paper's bf16.

Where bf16 is kept for speed (``precision="compute"``), :func:`precision_check` recomputes a seeded
sample of pairs in float32 and reports, per layer, the largest change of a pair's cosine; layers
above ``NOISE_LIMIT`` are flagged wherever per-pair values are shown.
"""

from __future__ import annotations

import contextlib

import torch

from .anatomy import decoder_parts, model_lock
from .errors import TLIError

PRECISIONS = {
    "float32": "float32 arithmetic on the model's own (quantized) weights: per-pair values are stable "
               "(default for every analysis)",
    "compute": "the model's compute dtype (bf16 for the paper's NF4): faster on some hardware, with a measured "
               "per-layer bound on the per-pair error",
    "authors": "the authors' script's arithmetic, for an exact reproduction: it passed no torch_dtype, so under its "
               "pinned transformers the modules that are not quantized (embeddings, norms) ran in float16, the 4-bit "
               "layers in bfloat16 (bnb_4bit_compute_dtype)",
}
NOISE_LIMIT = 1e-3
_LOW = (torch.bfloat16, torch.float16)


def _is_quantized_param(p: torch.nn.Parameter) -> bool:
    return type(p).__name__ in ("Params4bit", "Int8Params") or p.dtype in (torch.uint8, torch.int8)


@contextlib.contextmanager
def analysis_precision(model, precision: str = "float32"):
    """Run the decoder of ``model`` in ``precision`` inside the block; restore it exactly afterwards.

    Holds the model's lock throughout: nobody else runs a forward on a half-cast model.
    """
    if precision not in PRECISIONS:
        raise TLIError(f"unknown analysis precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "compute":
        yield
        return
    plain, four_bit = (torch.float16, torch.bfloat16) if precision == "authors" else (torch.float32, torch.float32)
    decoder = decoder_parts(model)[0]
    saved: list[tuple[object, str, object]] = []
    with model_lock(model):
        try:
            for module in decoder.modules():
                compute = getattr(module, "compute_dtype", None)
                if compute is not None and compute != four_bit and compute in _LOW + (torch.float32,):
                    saved.append((module, "compute_dtype", compute))  # bitsandbytes 4-bit layers
                    module.compute_dtype = four_bit
                for p in module.parameters(recurse=False):
                    if p.is_floating_point() and p.dtype != plain and not _is_quantized_param(p):
                        saved.append((p, "data", p.data))
                        p.data = p.data.to(plain)
            yield
        finally:
            for obj, attr, old in reversed(saved):
                setattr(obj, attr, old)


def runs_in_float32(model, precision: str) -> bool:
    """Whether an analysis in ``precision`` computes in float32 on this model."""
    if precision == "float32":
        return True
    return all(p.dtype == torch.float32 for p in decoder_parts(model)[0].parameters()
               if not _is_quantized_param(p)) and all(
        getattr(m, "compute_dtype", torch.float32) in (None, torch.float32) for m in decoder_parts(model)[0].modules())


# --------------------------------------------------------------------------- which 4-bit weights

DEQUANT = {
    "float32": "4-bit weights dequantized straight to float32 (the float32 analysis)",
    "bfloat16": "4-bit weights dequantized to bfloat16 first, then computed in float32 (the weights training and "
                "bf16 arithmetic use)",
}


def four_bit_layers(model) -> list:
    """The bitsandbytes 4-bit linear layers of the model's decoder (none for an unquantized model)."""
    return [m for m in decoder_parts(model)[0].modules() if type(m).__name__ in ("Linear4bit", "LinearNF4",
                                                                                  "LinearFP4")]


@contextlib.contextmanager
def dequantized_via(model, dtype: str = "bfloat16"):
    """Inside the block, every 4-bit layer computes with its weights dequantized to ``dtype`` and cast to the input's
    dtype: under a float32 analysis, float32 arithmetic on bf16-rounded weights. Restored on leaving."""
    if dtype not in DEQUANT:
        raise TLIError(f"unknown dequantization {dtype!r}; use one of {', '.join(DEQUANT)}")
    if dtype == "float32":
        yield
        return
    import bitsandbytes as bnb

    target = getattr(torch, dtype)
    patched = []

    def forward_of(module):
        def forward(x, *args, **kwargs):
            w = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).to(target)
            bias = module.bias.to(x.dtype) if module.bias is not None else None
            return torch.nn.functional.linear(x, w.to(x.dtype), bias)
        return forward

    with model_lock(model):
        try:
            for m in four_bit_layers(model):
                patched.append(m)
                m.forward = forward_of(m)
            yield
        finally:
            for m in patched:
                del m.forward  # back to the class's own forward
