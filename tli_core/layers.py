"""The one layer-numbering convention of the project, and how user input maps onto it.

Layer 0 is the input embeddings; layer k (1 <= k < L) is the output of decoder block k
(blocks counted from 1); layer L is the output of the last block after the final norm --
exactly the indices of Hugging Face's ``hidden_states`` tuple. Blocks are numbered 1..L, and
block k produces layer k.
"""

from __future__ import annotations

from .errors import TLIError
from .util import parse_int_ranges

CONVENTION = "0 = input embeddings, k = output of decoder block k, L = final output after the norm"


def layer_name(k: int, num_layers: int) -> str:
    """Human name of hidden state k."""
    if k == 0:
        return "embeddings"
    if k == num_layers:
        return f"block {k} + final norm"
    return f"block {k}"


def resolve_layer(k, num_layers: int, what: str = "layer") -> int:
    """Validate a layer index (negative counts from the end, -1 = final) against the model."""
    try:
        typed = int(k)
    except (TypeError, ValueError):
        raise TLIError(f"{what} must be a whole number, got {k!r}") from None
    resolved = typed + num_layers + 1 if typed < 0 else typed
    if not 0 <= resolved <= num_layers:
        shown = f"{typed}" if typed >= 0 else f"{typed} (counted from the end)"
        raise TLIError(f"{what} {shown} is outside this model's layers 0..{num_layers} "
                       f"(0 = embeddings, {num_layers} = final output; -1 = final, -{num_layers + 1} = embeddings)")
    return resolved


def paper_eval_layer(num_layers: int) -> int:
    """The paper's "layer 31" on a 32-block model: ``hidden_states[L-1]``, the output of block L-1.

    The pilot scanned ``hidden_states[0..31]`` of Llama-3-8B and the text evaluates at the last
    index it scanned; the final hidden state (L, after the last block and final norm) is one further.
    """
    return max(num_layers - 1, 0)


def parse_layers(text: str | None) -> list[int] | None:
    """'0,2,5-8' -> [0, 2, 5, 6, 7, 8]; -1 is the final layer; None, '' or 'all' = every layer."""
    if text is None or str(text).strip() in ("", "all"):
        return None
    return parse_int_ranges(text, "layers")


def parse_blocks(text: str, num_layers: int) -> list[int]:
    """'1-4,8' -> [1, 2, 3, 4, 8], checked against the model's blocks 1..L."""
    try:
        blocks = sorted(set(parse_int_ranges(text, "adapter blocks", "1-4,8")))
    except TLIError:
        raise TLIError(f"cannot read adapter blocks {text!r}: use all, up_to_target, early, late "
                       f"or block numbers such as 1-4,8") from None
    bad = [b for b in blocks if not 1 <= b <= num_layers]
    if bad:
        raise TLIError(f"adapter blocks must be within 1..{num_layers} (got {text!r})")
    return blocks
