"""Load a causal LM the way the TLI paper does (4-bit NF4, bfloat16 compute), or any other way.

One code path serves hub ids, local directories and ``demo`` (the embedded SmolLM2-135M model,
see ``demo.py``). The loaded model is frozen and in eval mode; ``ModelFacts`` says what a
researcher needs to know about it. Layers are numbered as in ``layers.py``.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .anatomy import default_lora_targets, linear_module_names, linear_shapes
from .demo import DEMO, DEMO_LABEL, prepare_demo
from .errors import TLIError
from .progress import Progress, no_progress

QUANTIZATIONS = ("nf4", "fp4", "int8", "bf16", "fp32")
BNB_4BIT = ("nf4", "fp4")  # fp4: bitsandbytes' default 4-bit type, what BitsAndBytesConfig(load_in_4bit=True) gives
DEVICES = ("auto", "cpu", "cuda")
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
PHASE = "loading model"


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how. Defaults are the paper's: 4-bit NF4, bfloat16 compute."""

    model: str = DEMO  # "demo", a Hugging Face hub id, or a local directory
    quantization: str = "nf4"  # nf4 (paper) | fp4 (the authors' evaluation script) | int8 | bf16 | fp32
    device: str = "auto"  # auto (GPU if present, sharded with accelerate) | cpu | cuda
    compute_dtype: str = "bfloat16"  # matmul dtype for nf4/fp4 (bnb_4bit_compute_dtype)
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
        _parse_max_memory(self.max_memory)  # a typo is refused here, not after a run was created

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

    def shape(self, linear_modules=None) -> ModelShape:
        return ModelShape(self.num_layers, self.model_type, linear_modules)

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
             if self.quantization in ("nf4", "fp4", "int8") else self.quantization),
            ("compute dtype", self.compute_dtype),
            ("parameter dtypes", ", ".join(f"{k}: {v:,}" for k, v in self.param_dtypes.items())),
            ("device", f"{self.device} ({', '.join(f'{k}: {v}' for k, v in self.device_map.items())})"),
            ("memory footprint", f"{self.memory_bytes / 2**20:,.1f} MiB"),
            ("tokenizer adds BOS", f"yes ({self.bos_token})" if self.adds_bos else "no"),
            ("pad token", f"{self.pad_token} ({self.pad_token_choice})"),
            ("LoRA targets (default)", ", ".join(self.lora_targets)),
            ("load time", f"{self.load_seconds:.1f} s"),
        ]


@dataclass(frozen=True)
class ModelShape:
    """What settings are checked against before any weight is loaded (read from the model's config)."""

    num_layers: int  # decoder blocks L
    model_type: str
    linear_modules: frozenset[str] | None = None  # short names of the blocks' linear layers; None = unknown
    linears: dict[str, tuple[int, int]] | None = field(default=None, compare=False, hash=False)  # path -> (in, out)


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel (frozen, eval mode)
    tokenizer: object
    spec: ModelSpec
    facts: ModelFacts


# --------------------------------------------------------------------------- resolving sources

def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


_RESOLVED: dict[ModelSpec, tuple[str, str, dict]] = {}


def resolve_source(spec: ModelSpec, progress: Progress = no_progress) -> tuple[str, str, dict]:
    """Return (source kind, path or hub id, extra from_pretrained kwargs) or raise TLIError.

    Remembered per process: checking a config and then loading its model resolve it once.
    """
    if spec not in _RESOLVED:
        _RESOLVED[spec] = _resolve_source(spec, progress)
    kind, path, extra = _RESOLVED[spec]
    if kind == "local" and not Path(path).is_dir():  # moved or deleted since: look again
        _RESOLVED[spec] = _resolve_source(spec, progress)
    return _RESOLVED[spec]


def _resolve_source(spec: ModelSpec, progress: Progress) -> tuple[str, str, dict]:
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
    if not hub_reachable():
        raise TLIError(f"model {name!r} is not a local directory, not in the Hugging Face cache, and the hub "
                       f"cannot be reached from here; give a local path or use 'demo'")
    return "hub", name, {}


def model_shape(spec: ModelSpec) -> ModelShape:
    """Layers, architecture and linear-layer names of ``spec``'s model from its config alone (no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    _, path, extra = resolve_source(spec)
    try:
        cfg = AutoConfig.from_pretrained(path, revision=spec.revision, trust_remote_code=spec.trust_remote_code,
                                         **extra)
    except (OSError, ValueError) as exc:
        raise TLIError(f"cannot read the config of {spec.model!r}: {str(exc).splitlines()[0]}") from None
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    try:  # a weightless skeleton on the meta device: module names at no memory cost
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(cfg, trust_remote_code=spec.trust_remote_code)
        linear, shapes = frozenset(linear_module_names(skeleton)), linear_shapes(skeleton)
    except Exception:  # an architecture we cannot build here: the names are checked after loading instead
        linear, shapes = None, None
    return ModelShape(int(text_cfg.num_hidden_layers), cfg.model_type, linear, shapes)


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
    if spec.quantization in BNB_4BIT + ("int8",):
        if device not in ("cpu", "cuda"):
            raise TLIError(f"{spec.quantization} (bitsandbytes) runs on CUDA or CPU only, not {device}")
        if device == "cpu" and spec.compute_dtype == "float16":
            raise TLIError("float16 compute is not supported on CPU; use bfloat16 or float32")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TLIError(f"{spec.quantization} needs bitsandbytes: pip install bitsandbytes>=0.50") from None
        if spec.quantization in BNB_4BIT:
            qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=spec.quantization,
                                    bnb_4bit_compute_dtype=compute)
            return {"quantization_config": qc, "dtype": compute}
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "dtype": torch.float16
                if device == "cuda" else torch.float32}
    if spec.quantization == "bf16":
        return {"dtype": torch.bfloat16}
    return {"dtype": torch.float32}


_MEMORY = re.compile(r"\d+(\.\d+)?\s*[KMG]i?B", re.IGNORECASE)  # what accelerate reads


def _parse_max_memory(text: str | None) -> dict | None:
    if not text:
        return None
    out = {}
    for part in str(text).split(","):
        key, _, value = (s.strip() for s in part.partition(":"))
        if not (key.isdigit() or key in ("cpu", "disk", "mps")) or not _MEMORY.fullmatch(value):
            raise TLIError(f"max_memory entry {part.strip()!r} must look like 0:20GiB or cpu:64GiB "
                           f"(a GPU number, cpu, disk or mps, then an amount in KB, MB, GB, KiB, MiB or GiB)")
        out[int(key) if key.isdigit() else key] = value
    return out


# --------------------------------------------------------------------------- loading

def load_model(spec: ModelSpec | str = DEMO, progress: Progress = no_progress) -> LoadedModel:
    """Load model + tokenizer + facts. The model is frozen and in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(spec, str):
        spec = ModelSpec(model=spec)
    start = time.perf_counter()
    device = resolve_device(spec.device)
    quant = _quantization_kwargs(spec, device)  # refuse impossible settings before any work
    progress(PHASE, 2, 100, f"resolving {spec.model}")
    source, path, extra = resolve_source(spec, progress)
    kwargs = dict(quant, revision=spec.revision, trust_remote_code=spec.trust_remote_code, **extra)
    if device == "cuda":
        kwargs["device_map"] = "auto"  # accelerate shards over every visible GPU
        if spec.max_memory:
            kwargs["max_memory"] = _parse_max_memory(spec.max_memory)
    else:
        kwargs["device_map"] = "cpu"
    progress(PHASE, 55, 100, f"loading weights ({spec.quantization} on {device})")
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
    progress(PHASE, 95, 100, "collecting model facts")
    facts = _facts(model, tokenizer, spec, source, path, device, pad_choice, time.perf_counter() - start)
    progress(PHASE, 100, 100, f"loaded {facts.name} in {facts.load_seconds:.1f} s")
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
        compute_dtype=spec.compute_dtype if spec.quantization in BNB_4BIT else {
            "bf16": "bfloat16", "fp32": "float32", "int8": "int8 matmul"}[spec.quantization],
        param_dtypes=dtypes, quantized_linear_layers=count_quantized(model), device=device,
        device_map=placement, memory_bytes=int(model.get_memory_footprint()), adds_bos=bool(adds_bos),
        bos_token=tokenizer.bos_token, pad_token=str(tokenizer.pad_token), pad_token_choice=pad_choice,
        lora_targets=default_lora_targets(cfg.model_type), load_seconds=round(seconds, 2),
        versions=package_versions(),
    )
