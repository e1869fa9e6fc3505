"""Evaluation protocols: how 'before' and 'after' similarities are measured, by name.

The paper's text and its authors' published script measured the headline numbers differently
(see ``../shared/DESIGN.md``). Each way is a named protocol, recorded with every result and
printed beside every figure, so a number always says how it was obtained:

``paper-text``  what the paper says: the output side ("layer 31" of a 32-block model =
                ``hidden_states[L-1]``), mean pooling with BOS included, adapter attached;
``paper-code``  what the authors' script did: the training layer, special tokens left out of
                the average, adapter merged into the 4-bit base (which re-quantizes the
                weights) -- this reproduces the published statistics;
``paper-code-fp4``  the same, with the base loaded as the script loaded it: bitsandbytes 4-bit
                with its default FP4 type (not the NF4 it was trained in) and bf16 compute;
``paper-code-exact``  the same again in the script's arithmetic (float16 unquantized modules, no
                torch_dtype given), for an exact reproduction of the published per-pair table;
``studio``      the tool's recommendation (its layer and pooling are settings of a run).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import TLIError
from .layers import paper_eval_layer, resolve_layer

EVAL_LAYERS = ("paper", "target", "last")  # symbolic evaluation layers; or a layer number


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    layer: str | int  # paper | target | last | a number
    pooling: str
    merged: bool  # adapter merged into the (quantized) base, as merge_and_unload does
    quantization: str | None  # None: the run's own; "fp4": reload the base in bitsandbytes' FP4 for evaluation
    reasons: tuple[str, ...]
    precision: str | None = None  # None: the run's analysis precision; "authors": the script's float16/bf16

    def describe(self, weights: str = "lora") -> str:
        """One line on what the protocol measures; ``weights="full"`` for fully fine-tuned blocks (no adapter)."""
        layer = {"paper": "layer L-1 (the paper's 'layer 31')", "target": "the training layer",
                 "last": "the final layer L"}.get(str(self.layer), f"layer {self.layer}")
        adapter = ("adapter merged into the quantized base (the merged weights are re-quantized, so the model "
                   "differs slightly from base + adapter)" if self.merged else "adapter attached (exact weights)")
        if weights == "full":
            adapter = "fine-tuned blocks in float32" + (" (no adapter to merge)" if self.merged else "")
        quant = "; base reloaded in FP4 (the script's BitsAndBytesConfig default)" if self.quantization == "fp4" else ""
        arithmetic = ("; the script's arithmetic (float16 embeddings and norms, bf16 4-bit layers)"
                      if self.precision == "authors" else "")
        return f"{layer}, pooling {self.pooling}, {adapter}{quant}{arithmetic}"


PROTOCOLS = {
    "studio": Protocol(
        "studio", "TLI Studio (recommended)", "paper", "mean_sink", False, None, (
            "layer L-1: the paper's claim is about alignment on the output side, where its text measures it",
            "a sink token before every word, left out of the average, whatever the tokenizer: the first position "
            "carries massive activations that make every mean-pooled pair look alike (leaving out special tokens "
            "removes nothing on a tokenizer that adds no BOS)",
            "adapter attached, not merged: merging into 4-bit weights re-quantizes them and changes the model",
            "float32 analysis: bf16 rounding moves single-pair cosines by up to 0.79 in deep layers",
            "shown next to the shuffled-pair baseline and retrieval over all gold translations")),
    "paper-text": Protocol(
        "paper-text", "the paper's text", "paper", "mean", False, None, (
            "the paper reports before/after at 'layer 31' of a 32-block model with mean pooling",)),
    "paper-code": Protocol(
        "paper-code", "the authors' published script", "target", "mean_words", True, None, (
            "TARGET_LAYER = 2 in the script: the training layer",
            "special tokens excluded from the average",
            "merge_and_unload into the 4-bit model: reproduces the published per-pair table")),
    "paper-code-fp4": Protocol(
        "paper-code-fp4", "the authors' script with its FP4 base", "target", "mean_words", True, "fp4", (
            "as paper-code, with the base reloaded by BitsAndBytesConfig(load_in_4bit=True, "
            "bnb_4bit_compute_dtype=bfloat16): bitsandbytes' default 4-bit type is FP4",)),
    "paper-code-exact": Protocol(
        "paper-code-exact", "the authors' script, its arithmetic too", "target", "mean_words", True, "fp4", (
            "as paper-code-fp4, and in the script's arithmetic: it passed no torch_dtype, so under its pinned "
            "transformers the unquantized modules ran in float16 while the 4-bit layers computed in bfloat16",),
        precision="authors"),
}
DEFAULT_PROTOCOLS = ["studio", "paper-text", "paper-code"]


def get_protocol(name: str, eval_layer: str | int | None = None, eval_pooling: str | None = None) -> Protocol:
    """The protocol called ``name``; the studio protocol takes the run's evaluation layer and pooling."""
    if name not in PROTOCOLS:
        raise TLIError(f"unknown evaluation protocol {name!r}; use one of {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[name]
    if name == "studio":
        p = replace(p, layer=p.layer if eval_layer is None else eval_layer,
                    pooling=eval_pooling or p.pooling)
    return p


def check_eval_layer(value) -> str | int:
    """A symbolic evaluation layer (paper, target, last) or a whole number, as typed."""
    if value is None:
        return "paper"
    if isinstance(value, str) and value.strip() in EVAL_LAYERS:
        return value.strip()
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(str(value).strip())
    except ValueError:
        raise TLIError(f"evaluation layer must be {', '.join(EVAL_LAYERS)} or a layer number (got {value!r})") \
            from None
    return number


def resolve_eval_layer(value, num_layers: int, target_layers: list[int]) -> int:
    """The number behind a symbolic evaluation layer, for this model and these target layers."""
    value = check_eval_layer(value)
    if value == "paper":
        return paper_eval_layer(num_layers)
    if value == "target":
        return max(target_layers)
    if value == "last":
        return num_layers
    return resolve_layer(value, num_layers, "evaluation layer")
