"""Shared fixtures: a tiny random Llama (character tokenizer that adds BOS), word pairs, run dirs.

The tiny model is built and saved once per session and loaded through ``tli_core.models``
exactly like a user's local model directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

CHARS = list("abcdefghijklmnopqrstuvwxyz '-")
TINY_LAYERS = 4


def build_tiny_model(path: Path, seed: int = 0, layers: int = TINY_LAYERS, hidden: int = 64) -> Path:
    """A random Llama with a character-level tokenizer that prepends BOS (like Llama-3's)."""
    import torch
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=None,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """The tiny model loaded in fp32 (shared; tests must not mutate it)."""
    from tli_core.models import ModelSpec, load_model

    return load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"))


WORDS = [("maji", "water"), ("kitabu", "book"), ("mbwa", "dog"), ("paka", "cat"), ("nyumba", "house"),
         ("jua", "sun"), ("mti", "tree"), ("mama", "mother"), ("baba", "father"), ("moja", "one"),
         ("mbili", "two"), ("tatu", "three"), ("chakula", "food"), ("gari", "car"), ("samaki", "fish"),
         ("ndege", "bird"), ("mkono", "hand"), ("mguu", "leg"), ("jicho", "eye"), ("sikio", "ear"),
         ("kichwa", "head"), ("moyo", "heart"), ("habari za asubuhi", "good morning"), ("asante", "thank you")]


def trained_tiny_run(tiny_model_dir: Path, directory: Path, **settings):
    """A run of the tiny model on the shared word pairs (18 trained, 6 control), trained to the end.

    ``settings`` are TLIConfig fields (batch 4, 2 epochs, 1 warm-up step unless given).
    """
    from tli_core.config import TLIConfig
    from tli_core.models import ModelSpec
    from tli_core.runs import create_run
    from tli_core.worker import execute

    t, c = directory / "t.csv", directory / "c.csv"
    pd.DataFrame(WORDS[:18], columns=["swahili", "english"]).to_csv(t, index=False)
    pd.DataFrame(WORDS[18:], columns=["swahili", "english"]).to_csv(c, index=False)
    settings = {"batch_size": 4, "epochs": 2, "warmup_steps": 1} | settings
    run = create_run(TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                               trained_pairs=str(t), control_pairs=str(c), **settings), directory / "runs")
    status = execute(run)
    assert status["state"] == "done", status
    return run


@pytest.fixture
def pairs_df() -> pd.DataFrame:
    return pd.DataFrame(WORDS[:18], columns=["swahili", "english"])


@pytest.fixture
def control_df() -> pd.DataFrame:
    return pd.DataFrame(WORDS[18:], columns=["swahili", "english"])


@pytest.fixture
def pair_files(tmp_path, pairs_df, control_df):
    trained, control = tmp_path / "trained.csv", tmp_path / "control.csv"
    pairs_df.to_csv(trained, index=False)
    control_df.to_csv(control, index=False)
    return trained, control


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never reach for the hub: an unknown id must fail fast and clearly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def point_dashboard(monkeypatch, runs_dir, model_dir) -> None:
    """The dashboard on the tiny model and ``runs_dir``, through the environment variables a user would set."""
    monkeypatch.setenv("TLI_DEFAULT_MODEL", str(model_dir))
    monkeypatch.setenv("TLI_DEFAULT_QUANT", "fp32")
    monkeypatch.setenv("TLI_DEFAULT_DEVICE", "cpu")
    monkeypatch.setenv("TLI_RUNS_DIR", str(runs_dir))
    monkeypatch.chdir(ROOT)


@pytest.fixture
def app_env(monkeypatch, tmp_path, tiny_model_dir):
    """The dashboard pointed at the tiny model and a runs directory of its own, through the environment
    variables a user would set (TLI_DEFAULT_MODEL, TLI_DEFAULT_QUANT, TLI_RUNS_DIR)."""
    point_dashboard(monkeypatch, tmp_path / "runs", tiny_model_dir)
    return tmp_path / "runs"


@pytest.fixture(scope="session")
def ray_runtime():
    """One local Ray runtime for the sweeps run inside the test process (each sweep would otherwise start its
    own: ~20 s on a busy 2-core machine). ``grid.run_sweep`` uses a runtime the process already holds."""
    import logging

    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20,
             logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def tiny_pair_files(directory: Path) -> tuple[Path, Path]:
    t, c = directory / "t.csv", directory / "c.csv"
    pd.DataFrame(WORDS[:18], columns=["swahili", "english"]).to_csv(t, index=False)
    pd.DataFrame(WORDS[18:], columns=["swahili", "english"]).to_csv(c, index=False)
    return t, c
