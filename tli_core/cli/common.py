"""What every command shares: the model flags, loading with progress, terminal progress bars."""

from __future__ import annotations

import argparse
import sys
import time

from ..embeddings import POOLINGS
from ..models import COMPUTE_DTYPES, DEVICES, QUANTIZATIONS, LoadedModel, ModelSpec, load_model

EXIT_USER_ERROR = 2


class TerminalProgress:
    """One-line progress bars on stderr, a new one per phase (nothing at all when disabled).

    Implements :class:`tli_core.progress.Progress`.
    """

    def __init__(self, enabled: bool = True):
        self.enabled, self.phase, self._bar = enabled, None, None
        self.start = time.perf_counter()

    def __call__(self, phase: str, done: float, total: float | None, detail: str = "") -> None:
        if not self.enabled:
            return
        if phase != self.phase:
            self.close()
            from tqdm import tqdm

            self.phase = phase
            self._bar = tqdm(total=total, desc=phase, file=sys.stderr, leave=False, dynamic_ncols=True)
        self._bar.total = total
        self._bar.n = done
        if detail:
            self._bar.set_postfix_str(detail, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def add_model_args(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Model flags; without ``defaults`` they stay None so a config file's values survive."""
    def d(value):
        return value if defaults else None

    g = p.add_argument_group("model")
    g.add_argument("--model", default=d("demo"),
                   help="'demo' (embedded SmolLM2-135M), a Hugging Face hub id, or a local model directory "
                        "(default: demo)")
    g.add_argument("--quant", choices=QUANTIZATIONS, default=d("nf4"),
                   help="weights: nf4 = 4-bit NormalFloat via bitsandbytes, as the paper (default); fp4 = "
                        "bitsandbytes' default 4-bit type, as the authors' evaluation script loaded it; int8; "
                        "bf16; fp32")
    g.add_argument("--device", choices=DEVICES, default=d("auto"),
                   help="auto = GPU(s) if present, sharded with accelerate, else CPU (default: auto)")
    g.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default=d("bfloat16"),
                   help="matmul dtype for nf4 (default: bfloat16, as the paper)")
    g.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    g.add_argument("--trust-remote-code", action="store_true", default=d(False),
                   help="allow the model's own Python code from the hub (off unless asked)")
    g.add_argument("--max-memory", default=None,
                   help="per-device caps for sharding, e.g. '0:20GiB,1:20GiB,cpu:64GiB'")


# argparse destination -> ModelSpec field
MODEL_FLAGS = {"model": "model", "quant": "quantization", "device": "device", "compute_dtype": "compute_dtype",
               "revision": "revision", "trust_remote_code": "trust_remote_code", "max_memory": "max_memory"}


def spec_from_args(args) -> ModelSpec:
    """The model flags as a ModelSpec (flags left unset take ModelSpec's defaults)."""
    return ModelSpec(**{field: getattr(args, dest) for dest, field in MODEL_FLAGS.items()
                        if getattr(args, dest, None) is not None})


def load(spec: ModelSpec, quiet: bool) -> LoadedModel:
    def report(phase: str, done: float, total: float | None, detail: str = "") -> None:
        if not quiet:
            print(f"[{done / (total or 100):4.0%}] {detail or phase}", file=sys.stderr)

    return load_model(spec, progress=report)


def pooling_help() -> str:
    """The pooling modes as ``embeddings.POOLINGS`` describes them (the one description the UI shows too)."""
    return "; ".join(f"{name} = {text}" for name, text in POOLINGS.items())
