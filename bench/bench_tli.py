"""Benchmark TLI Studio's engine against reference-style loops, in one run, and print ratios.

What is compared (same model, same words, same process):
  scan   engine: every word once, all layers from one batched forward, pooled on the device
         reference: the paper's pilot script -- one forward per word *per layer*
         (tokenize the word, full CausalLM forward with output_hidden_states, take
         hidden_states[k], mean-pool, normalise)
  train  engine: TLI step with early exit after the target layer (blocks beyond never run)
         reference: the same step with the full forward (all blocks + lm_head), as the paper

The reference scan is slow by design: by default it runs on a seeded sample of words and its
per-forward time is extrapolated to the full workload (the cost per forward does not depend on
which word it is); --ref-words all runs it in full. The engine's vectors are checked against
the reference ones for the sampled words.

Usage:
  python bench/bench_tli.py                         # CPU, demo model (NF4), default pairs
  python bench/bench_tli.py --model llama3-8b-random --device cuda   # a GPU: Llama-3-8B shape, NF4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tli_core.util import quiet_libraries  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_random_llama3_8b(path: Path) -> Path:
    """Llama-3-8B's configuration with random bf16 weights, saved once (no download).

    The tokenizer is a character-level stand-in that prepends BOS like Llama-3's: real ids
    do not matter for timing or memory, sequence lengths are in the same range.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    if (path / "config.json").is_file():
        return path
    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                         rope_theta=500000.0, rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001,
                         tie_word_embeddings=False)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path, max_shard_size="4GB")
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    vocab = {chr(c): c for c in range(32, 127)}
    vocab.update({"<unk>": 0, "<|begin_of_text|>": 128000, "<|end_of_text|>": 128001})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", 128000)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                            unk_token="<unk>").save_pretrained(path)
    return path


def reference_vectors(model, tokenizer, words, layers, device):
    """The pilot script's loop: one forward per word per layer."""
    out = np.zeros((len(layers), len(words), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for j, k in enumerate(layers):
            for i, w in enumerate(words):
                enc = tokenizer(w, return_tensors="pt").to(device)
                hs = model(**enc, output_hidden_states=True).hidden_states[k]
                v = (hs * enc["attention_mask"].unsqueeze(-1)).sum(1) / enc["attention_mask"].sum(1, keepdim=True)
                out[j, i] = torch.nn.functional.normalize(v.float(), dim=-1)[0].cpu().numpy()
    return out


def bench_scan(lm, words, ref_words, repeats, device):
    from tli_core.embeddings import embed

    n_layers = lm.facts.num_layers
    layers = list(range(n_layers + 1))
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        emb = embed(lm.model, lm.tokenizer, words)
        sync(device)
        times.append(time.perf_counter() - t0)
    engine = statistics.median(times)

    rng = np.random.default_rng(0)
    sample = words if ref_words >= len(words) else [words[i] for i in sorted(rng.choice(len(words), ref_words,
                                                                                          replace=False))]
    sync(device)
    t0 = time.perf_counter()
    ref = reference_vectors(lm.model, lm.tokenizer, sample, layers, device)
    sync(device)
    ref_time = time.perf_counter() - t0
    forwards = len(sample) * len(layers)
    ref_full = ref_time / forwards * len(words) * len(layers)
    idx = [words.index(w) for w in sample]
    mine = emb.vectors[:, idx].numpy()
    diff = float(np.abs(mine - ref).max())
    agreement = float((mine * ref).sum(-1).min())  # cosine between the two vectors of the same word
    return {"words": len(words), "layers": len(layers), "engine_s": engine, "engine_runs_s": times,
            "reference_sample_words": len(sample), "reference_sample_s": ref_time,
            "reference_s_per_forward": ref_time / forwards, "reference_full_s": ref_full,
            "reference_extrapolated": len(sample) < len(words), "speedup": ref_full / engine,
            "max_abs_diff_vs_reference": diff, "min_cosine_vs_reference": agreement}


def bench_train(lm, trained, steps, device, target=2):
    from tli_core.config import TLIConfig, resolve
    from tli_core.embeddings import tokenise
    from tli_core.training import attach_lora, epoch_batches, step_loss

    out = {}
    config = TLIConfig(model=lm.spec, target_layers=[target])
    resolved, _ = resolve(config, lm.facts.shape())
    peft_model = attach_lora(lm.model, config, resolved)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    tok_s = tokenise(lm.tokenizer, list(trained["swahili"]))
    tok_t = tokenise(lm.tokenizer, list(trained["english"]))
    batches = epoch_batches(len(trained), config.batch_size, torch.Generator().manual_seed(0))
    pad = lm.tokenizer.pad_token_id
    peft_model.train()
    for mode, early in (("early_exit", True), ("full_forward", False)):
        cfg = TLIConfig(model=lm.spec, target_layers=[target], early_exit=early)
        times = []
        for i in range(steps + 2):
            b = batches[i % len(batches)]
            sync(device)
            t0 = time.perf_counter()
            loss, _ = step_loss(peft_model, tok_s, tok_t, b, pad, cfg, resolved.target_layers, None, device)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sync(device)
            if i >= 2:  # two warm-up steps
                times.append(time.perf_counter() - t0)
        out[f"{mode}_ms_per_step"] = 1000 * statistics.median(times)
    out["speedup"] = out["full_forward_ms_per_step"] / out["early_exit_ms_per_step"]
    out["epoch_steps"] = len(batches)
    out["five_epochs_early_exit_s_estimate"] = out["early_exit_ms_per_step"] * len(batches) * 5 / 1000
    peft_model.unload()  # give the base model back without adapters
    return out


def bench_epochs(lm, trained, device, target=2):
    """Measured, not estimated: ``training.train`` with the paper's settings (5 epochs, r=16, lr 2e-4,
    batch 8, triplet loss) at the target layer, early exit on, from freshly attached adapters."""
    from tli_core.config import TLIConfig, resolve
    from tli_core.training import attach_lora, train

    config = TLIConfig(model=lm.spec, target_layers=[target])
    resolved, _ = resolve(config, lm.facts.shape())
    peft_model = attach_lora(lm.model, config, resolved)
    losses = []
    sync(device)
    t0 = time.perf_counter()
    result = train(peft_model, lm.tokenizer, trained, config, resolved,
                   on_step=lambda m: losses.append(m["loss"]))
    sync(device)
    wall = time.perf_counter() - t0
    peft_model.unload()
    return {"epochs": config.epochs, "steps": result.steps, "state": result.state, "wall_s": wall,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="demo | llama3-8b-random | any model id or directory")
    p.add_argument("--quant", default="nf4")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--compute-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="nf4 matmul dtype (the paper: bfloat16; float32 is faster on CPUs without bf16 matmul units)")
    p.add_argument("--ref-words", default="60", help="words the reference loop runs on (or 'all')")
    p.add_argument("--repeats", type=int, default=3, help="engine scan repeats (median reported)")
    p.add_argument("--steps", type=int, default=20, help="training steps timed per mode")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)

    from tli_core.models import ModelSpec, load_model
    from tli_core.pairs import load_default_pairs

    model = args.model
    if model == "llama3-8b-random":
        model = str(make_random_llama3_8b(Path(os.environ.get("TLI_BENCH_DIR", "/tmp")) / "llama3-8b-random"))
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    lm = load_model(ModelSpec(model=model, quantization=args.quant, device=args.device,
                              compute_dtype=args.compute_dtype))
    load_s = time.perf_counter() - t0
    trained, control = load_default_pairs()
    words = list(trained["swahili"]) + list(trained["english"]) + list(control["swahili"]) + list(control["english"])
    ref_words = len(words) if args.ref_words == "all" else int(args.ref_words)

    scan = bench_scan(lm, words, ref_words, args.repeats, args.device)
    train = bench_train(lm, trained, args.steps, args.device)
    epochs = bench_epochs(lm, trained, args.device)
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{cpu_name()}, {os.cpu_count()} cores"
        + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""),
        "torch_threads": torch.get_num_threads(), "model": lm.facts.name, "quantization": args.quant,
        "compute_dtype": args.compute_dtype,
        "device": args.device, "load_s": load_s, "pairs": len(trained) + len(control), "scan": scan, "train": train,
        "five_epochs": epochs,
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None,
    }
    s, t = scan, train
    print(f"{result['model']} [{args.quant}, {args.compute_dtype} compute, {args.device}], {result['machine']}, "
          f"torch threads {result['torch_threads']}")
    print(f"load: {load_s:.1f} s")
    print(f"scan, {s['words']} words x {s['layers']} layers:")
    print(f"  engine (one batched pass)  {s['engine_s']:.3f} s  (median of {len(s['engine_runs_s'])}: "
          + ", ".join(f"{x:.3f}" for x in s["engine_runs_s"]) + ")")
    print(f"  reference (per word, per layer) {s['reference_s_per_forward'] * 1000:.1f} ms/forward x "
          f"{s['words'] * s['layers']} forwards = {s['reference_full_s']:.1f} s"
          + (f" (extrapolated from {s['reference_sample_words']} words, {s['reference_sample_s']:.1f} s measured)"
             if s["reference_extrapolated"] else ""))
    print(f"  speed-up: {s['speedup']:.0f}x; same vectors: min cosine(engine, reference) over words x layers = "
          f"{s['min_cosine_vs_reference']:.6f} (max |component difference| {s['max_abs_diff_vs_reference']:.1e})")
    print("training step (batch 8, target layer 2, LoRA r=16 on q/v of every block):")
    print(f"  early exit {t['early_exit_ms_per_step']:.1f} ms/step, full forward {t['full_forward_ms_per_step']:.1f} "
          f"ms/step: speed-up {t['speedup']:.1f}x")
    e = epochs
    print(f"TLI training, paper's settings ({e['epochs']} epochs, {e['steps']} steps, layer 2, early exit): "
          f"{e['wall_s']:.1f} s measured ({e['state']}; loss {e['first_loss']:.3f} -> {e['last_loss']:.3f})")
    print(f"peak RSS {result['peak_rss_mib']:.0f} MiB" + (f", peak GPU memory {result['peak_gpu_gib']:.2f} GiB"
                                                          if result["peak_gpu_gib"] is not None else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
