"""Small helpers every layer of the project uses: quiet third-party logging, integer ranges."""

from __future__ import annotations

import logging
import os
import re
import warnings

from .errors import TLIError

_RANGE = re.compile(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?")


def quiet_libraries() -> None:
    """Keep the terminal (and the dashboard's log) for our own output: no banners or loading bars."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    for name in ("transformers", "bitsandbytes", "peft", "accelerate", "huggingface_hub", "datasets", "lm-eval",
                 "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def parse_int_ranges(text: str, what: str, example: str = "0,2,5-8") -> list[int]:
    """'0,2,5-8' -> [0, 2, 5, 6, 7, 8] in the order written; ranges are inclusive; negatives allowed.

    The one parser behind layer lists (CLI), adapter block lists and sweep grids.
    """
    out: list[int] = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        m = _RANGE.fullmatch(part)
        if not m:
            raise TLIError(f"cannot read {what} {text!r}: use numbers and ranges such as {example}")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else None
        if b is not None and b < a:
            raise TLIError(f"cannot read {what} {text!r}: the range {a}-{b} runs backwards")
        out += [a] if b is None else list(range(a, b + 1))
    if not out:
        raise TLIError(f"no {what} given (e.g. {example})")
    return out


def cpu_count() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads(units: int, cores: int | None = None) -> int:
    """Threads per unit for a CPU sweep of ``units`` units: the cores shared among as many units as can run."""
    cores = cores or cpu_count()
    return max(1, cores // max(1, min(units, cores)))


def parse_seeds(text) -> list[int] | None:
    """'1,2,3' or '1-3' -> [1, 2, 3]; empty -> None (the config's one seed). Seeds are numpy's 32-bit range."""
    if text is None or not str(text).strip():
        return None
    seeds = parse_int_ranges(str(text), "seeds", "1,2,3")
    bad = [s for s in seeds if not 0 <= s < 2**32]
    if bad:
        raise TLIError(f"seeds must be whole numbers from 0 to 4294967295 (got {bad[0]})")
    return seeds
