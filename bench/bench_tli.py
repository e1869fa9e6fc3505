"""Benchmark TLI Studio's engine against reference-style loops, in one run, and print ratios.

What is compared (same model, same words, same process):
  scan   engine: the Layer scan (every word once, all layers from packed forwards, pooled and scored on
         the device; only the numbers come to the host)
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
  bash bench/gpu_check.sh                           # the same on a lent GPU machine, in one call
"""

from __future__ import annotations

import argparse
import dataclasses
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


BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


def llama3_style_tokenizer(source: Path | None, dest: Path) -> str:
    """A tokenizer for the 8B-shaped model whose token counts match real words: the demo model's BPE vocabulary
    (49,152 ids, all inside Llama-3's 128,256) with Llama-3's BOS (id 128000) prepended -- 3.35 tokens per word
    on the default pairs, BOS included, where Llama-3's own tokenizer gives about 2-4. Without the demo's
    tokenizer.json (``source``), a character-level stand-in (~7.3 tokens per word). Returns which one."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if source is not None and source.is_file():
        data = json.loads(source.read_text(encoding="utf-8"))
        data["model"]["vocab"].update({BOS: 128000, EOS: 128001})
        data["added_tokens"] = [t for t in data.get("added_tokens", []) if t["content"] not in (BOS, EOS)] + [
            {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": True} for c, i in ((BOS, 128000), (EOS, 128001))]
        data["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {BOS: {"id": BOS, "ids": [128000], "tokens": [BOS]}}}
        tok, kind = Tokenizer.from_str(json.dumps(data)), f"BPE ({source.name}, 49,152 ids) + Llama-3 BOS"
    else:
        vocab = {chr(c): c for c in range(32, 127)}
        vocab.update({"<unk>": 0, BOS: 128000, EOS: 128001})
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
        tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 128000)])
        kind = "character-level stand-in (no demo tokenizer.json found)"
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=None if source else
                            "<unk>").save_pretrained(dest)
    (dest / "tli_bench_tokenizer.txt").write_text(kind)
    return kind


def default_tokenizer_source() -> Path | None:
    """bench/tokenizer/tokenizer.json (copied there to carry to a GPU machine), else the prepared demo model's."""
    for candidate in (ROOT / "bench" / "tokenizer" / "tokenizer.json",
                      Path.home() / ".cache" / "tli_studio" / "demo" / "SmolLM2-135M-Instruct" / "tokenizer.json"):
        if candidate.is_file():
            return candidate
    return None


def make_random_llama3_8b(path: Path, tokenizer_source: Path | None) -> Path:
    """Llama-3-8B's configuration with random bf16 weights, saved once (no download), and its tokenizer
    (rewritten whenever the tokenizer source changes, the weights kept)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if not (path / "config.json").is_file():
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
    llama3_style_tokenizer(tokenizer_source, path)
    return path


def reference_vectors(model, tokenizer, words, layers, device):
    """The pilot script's loop: one forward per word per layer (in float32 arithmetic, as the engine's analysis)."""
    from tli_core.precision import analysis_precision

    out = np.zeros((len(layers), len(words), model.config.hidden_size), dtype=np.float32)
    with analysis_precision(model, "float32"), torch.no_grad():
        for j, k in enumerate(layers):
            for i, w in enumerate(words):
                enc = tokenizer(w, return_tensors="pt").to(device)
                hs = model(**enc, output_hidden_states=True).hidden_states[k]
                v = (hs * enc["attention_mask"].unsqueeze(-1)).sum(1) / enc["attention_mask"].sum(1, keepdim=True)
                out[j, i] = torch.nn.functional.normalize(v.float(), dim=-1)[0].cpu().numpy()
    return out


def bench_scan(lm, sets, ref_words, repeats, device):
    """The Layer scan as the app runs it (``alignment.scan``: statistics on the device), its cost proxies, and
    the reference loop on a sample of words for the speed-up and the vectors' agreement."""
    from tli_core.alignment import scan
    from tli_core.embeddings import embed, tokenise

    words = list(dict.fromkeys(w for df in sets.values() for col in ("swahili", "english") for w in df[col]))
    layers = list(range(lm.facts.num_layers + 1))
    times, res = [], None
    for _ in range(repeats + 1):  # the first call pays one-time kernel/library start-up: reported apart
        sync(device)
        t0 = time.perf_counter()
        res = scan(lm.model, lm.tokenizer, sets)
        sync(device)
        times.append(time.perf_counter() - t0)
    engine = statistics.median(times[1:])
    compute = []  # the same scan in the model's compute dtype, without the precision check the app adds
    for _ in range(max(1, repeats // 2)):
        sync(device)
        t0 = time.perf_counter()
        scan(lm.model, lm.tokenizer, sets, precision="compute", check_sample=0)
        sync(device)
        compute.append(time.perf_counter() - t0)
    lengths = tokenise(lm.tokenizer, words).lengths
    bound, bound_forwards = bare_forward_s(lm, words, device)
    bound_compute, _ = bare_forward_s(lm, words, device, "compute")

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
    mine = embed(lm.model, lm.tokenizer, sample, out_device="cpu").vectors.numpy()
    diff = float(np.abs(mine - ref).max())
    agreement = float((mine * ref).sum(-1).min())  # cosine between the two vectors of the same word
    return {"words": len(words), "layers": len(layers), "tokens": int(sum(lengths)),
            "tokens_per_word": float(np.mean(lengths)), "engine_s": engine, "first_call_s": times[0],
            "compute_precision_s": statistics.median(compute), "bare_forward_s": bound,
            "bare_forward_compute_s": bound_compute, "bare_forwards": bound_forwards,
            "engine_runs_s": times[1:], "forwards": res.stats.forwards, "padded_tokens": res.stats.padded_tokens,
            "bytes_to_host": res.stats.bytes_to_host,
            "vector_bytes_if_copied": len(layers) * len(words) * lm.model.config.hidden_size * 4,
            "reference_sample_words": len(sample), "reference_sample_s": ref_time,
            "reference_s_per_forward": ref_time / forwards, "reference_full_s": ref_full,
            "reference_extrapolated": len(sample) < len(words), "speedup": ref_full / engine,
            "max_abs_diff_vs_reference": diff, "min_cosine_vs_reference": agreement}


def bare_forward_s(lm, words, device, precision="float32", repeats=3) -> tuple[float, int]:
    """The bound a scan is held to: one bare decoder forward of the same packed words (no hooks, no pooling,
    no statistics), in the same arithmetic; median seconds and forwards."""
    from tli_core.anatomy import decoder_parts
    from tli_core.embeddings import build_packed, plan, tokenise
    from tli_core.precision import analysis_precision

    tok = tokenise(lm.tokenizer, words)
    forwards = plan(tok, lm.model, n_kept=lm.facts.num_layers + 1)
    pad = lm.tokenizer.pad_token_id or 0
    packed = [build_packed(tok, rows, pad, ["mean"], torch.device(device)) for rows in forwards]
    decoder = decoder_parts(lm.model)[0]
    times = []
    with analysis_precision(lm.model, precision), torch.inference_mode():
        for _ in range(repeats + 1):
            sync(device)
            t0 = time.perf_counter()
            for p in packed:
                decoder(input_ids=p.input_ids, position_ids=p.position_ids, use_cache=False)
            sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]), len(packed)


SYNC_CALLS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "nonzero", "cpu")


class SyncCounter:
    """Where the host waits for the device. On CUDA: PyTorch's own sync debug mode (every synchronising call
    warns; the warnings are counted by source line). On CPU, where nothing waits: the calls that would wait on
    a GPU (a value read, a data-dependent shape), counted by caller -- except the optimiser's step counters,
    host tensors by PyTorch's design (on CUDA the fused AdamW keeps them on the device)."""

    def __init__(self, device: str):
        self.device, self.sites = device, {}

    def __enter__(self):
        import traceback
        import warnings

        if self.device == "cuda":
            self._warnings = warnings.catch_warnings(record=True)
            self._caught = self._warnings.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        else:
            self._originals = {}
            for name in SYNC_CALLS:
                original = getattr(torch.Tensor, name)
                self._originals[name] = original

                def counted(t, *a, _o=original, _n=name, **k):
                    f = traceback.extract_stack(limit=2)[0]
                    if (Path(f.filename).name, f.name) != ("optimizer.py", "_get_value"):
                        key = f"{_n} in {Path(f.filename).name}:{f.name}"
                        self.sites[key] = self.sites.get(key, 0) + 1
                    return _o(t, *a, **k)

                setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.set_sync_debug_mode(0)
            for w in self._caught:
                if "synchroniz" in str(w.message):
                    key = f"{Path(w.filename).name}:{w.lineno}"
                    self.sites[key] = self.sites.get(key, 0) + 1
            self._warnings.__exit__(*exc)
        else:
            for name, original in self._originals.items():
                setattr(torch.Tensor, name, original)
        return False


def _train_steps(peft_model, lm, trained, config, resolved, steps):
    from tli_core.training import train

    subset = trained.head(config.batch_size * steps)
    return train(peft_model, lm.tokenizer, subset, dataclasses.replace(config, epochs=1, warmup_steps=1), resolved)


def bench_train(lm, trained, steps, device, target=2):
    """Per-step time of ``training.train`` (the app's loop: batches indexed on the device, no host sync inside a
    step, AdamW over the tensors that can learn) with early exit and with the paper's full forward; host syncs
    per step; and GPU-busy vs wall time per step from the torch profiler (on a CPU: where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    from tli_core.config import TLIConfig, resolve
    from tli_core.training import attach_lora

    out = {}
    config = TLIConfig(model=lm.spec, target_layers=[target])
    resolved, _ = resolve(config, lm.facts.shape())
    peft_model = attach_lora(lm.model, config, resolved)
    for mode, early in (("early_exit", True), ("full_forward", False)):
        cfg = dataclasses.replace(config, early_exit=early)
        _train_steps(peft_model, lm, trained, cfg, resolved, 3)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        result = _train_steps(peft_model, lm, trained, cfg, resolved, steps)
        sync(device)
        out[f"{mode}_ms_per_step"] = 1000 * (time.perf_counter() - t0) / result.steps
    out["speedup"] = out["full_forward_ms_per_step"] / out["early_exit_ms_per_step"]
    with SyncCounter(device) as counter:
        result = _train_steps(peft_model, lm, trained, config, resolved, 20)
    out["sync_sites_20_steps"] = counter.sites
    out["syncs_per_step"] = sum(counter.sites.values()) / result.steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    sync(device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        result = _train_steps(peft_model, lm, trained, config, resolved, 20)
        sync(device)
    wall = (time.perf_counter() - t0) / result.steps
    events = prof.key_averages()
    out["profiled_ms_per_step"] = 1000 * wall
    if device == "cuda":
        busy = sum(e.self_device_time_total for e in events) / 1000 / result.steps  # µs -> ms, per step
        out["gpu_busy_ms_per_step"] = busy
        out["gpu_busy_share"] = busy / (1000 * wall)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    out["cpu_top_ops_ms_per_step"] = {e.key: e.self_cpu_time_total / 1000 / result.steps for e in top}
    out["epoch_steps"] = -(-len(trained) // config.batch_size)
    peft_model.unload()  # give the base model back without adapters
    return out


def bench_compile(lm, trained, steps, device, target=2):
    """``torch.compile`` of the decoder blocks an early-exit step runs (blocks 1..target; the early exit raises
    from a hook between blocks, so each block is its own graph): steps from the same adapter state and seed,
    eager then compiled, with the compile time and how far the losses move."""
    from tli_core.anatomy import decoder_parts
    from tli_core.config import TLIConfig, resolve
    from tli_core.training import attach_lora, train

    config = TLIConfig(model=lm.spec, target_layers=[target])
    resolved, _ = resolve(config, lm.facts.shape())
    peft_model = attach_lora(lm.model, config, resolved)
    start = {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}

    def timed(n):
        peft_model.load_state_dict(start, strict=False)
        losses = []
        sync(device)
        t0 = time.perf_counter()
        subset = trained.head(config.batch_size * n)
        result = train(peft_model, lm.tokenizer, subset, dataclasses.replace(config, epochs=1, warmup_steps=1),
                       resolved, on_step=lambda m: losses.append(m["loss"]))
        sync(device)
        return (time.perf_counter() - t0) / result.steps, losses

    timed(3)  # warm-up
    eager_s, eager_losses = timed(steps)
    blocks = decoder_parts(peft_model)[1]
    try:
        for i in range(target):
            blocks[i].compile(dynamic=True)
        t0 = time.perf_counter()
        timed(3)
        compile_s = time.perf_counter() - t0
        compiled_s, compiled_losses = timed(steps)
    finally:
        for i in range(target):
            blocks[i]._compiled_call_impl = None  # what nn.Module.compile set: back to eager for what follows
        peft_model.unload()
    return {"eager_ms_per_step": 1000 * eager_s, "compiled_ms_per_step": 1000 * compiled_s,
            "first_steps_with_compile_s": compile_s,
            "max_loss_difference": max(abs(a - b) for a, b in zip(eager_losses, compiled_losses, strict=True))}


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
    p.add_argument("--repeats", type=int, default=5, help="scan repeats after the first call (median reported)")
    p.add_argument("--steps", type=int, default=20, help="training steps timed per mode")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json for llama3-8b-random (default: "
                                                     "bench/tokenizer/tokenizer.json, else the demo model's)")
    p.add_argument("--skip-epochs", action="store_true", help="leave out the measured five-epoch run")
    p.add_argument("--compile", action="store_true", help="also time training steps with the blocks before the "
                                                          "target compiled (torch.compile)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)

    from tli_core.models import ModelSpec, load_model
    from tli_core.pairs import load_default_pairs

    model, tokenizer_kind = args.model, None
    if model == "llama3-8b-random":
        source = Path(args.tokenizer) if args.tokenizer else default_tokenizer_source()
        model = str(make_random_llama3_8b(Path(os.environ.get("TLI_BENCH_DIR", "/tmp")) / "llama3-8b-random",
                                          source))
        tokenizer_kind = (Path(model) / "tli_bench_tokenizer.txt").read_text()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    lm = load_model(ModelSpec(model=model, quantization=args.quant, device=args.device,
                              compute_dtype=args.compute_dtype))
    load_s = time.perf_counter() - t0
    trained, control = load_default_pairs()
    n_words = 2 * (len(trained) + len(control))
    ref_words = n_words if args.ref_words == "all" else int(args.ref_words)

    scan = bench_scan(lm, {"trained": trained, "control": control}, ref_words, args.repeats, args.device)
    train = bench_train(lm, trained, args.steps, args.device)
    compiled = bench_compile(lm, trained, args.steps, args.device) if args.compile else None
    epochs = None if args.skip_epochs else bench_epochs(lm, trained, args.device)
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{cpu_name()}, {os.cpu_count()} cores"
        + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "model": lm.facts.name,
        "tokenizer": tokenizer_kind, "quantization": args.quant, "compute_dtype": args.compute_dtype,
        "device": args.device, "load_s": load_s, "pairs": len(trained) + len(control), "scan": scan, "train": train,
        "compile": compiled, "five_epochs": epochs,
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None,
    }
    s, t = scan, train
    print(f"{result['model']} [{args.quant}, {args.compute_dtype} compute, {args.device}], {result['machine']}, "
          f"torch {torch.__version__}, threads {result['torch_threads']}")
    if tokenizer_kind:
        print(f"tokenizer: {tokenizer_kind}")
    print(f"load: {load_s:.1f} s")
    print(f"layer scan (alignment.scan), {s['words']} distinct words ({s['tokens']} tokens, "
          f"{s['tokens_per_word']:.2f}/word) x {s['layers']} hidden states:")
    print(f"  engine {s['engine_s']:.3f} s (median of {len(s['engine_runs_s'])}: "
          + ", ".join(f"{x:.3f}" for x in s["engine_runs_s"]) + f"; first call {s['first_call_s']:.3f} s)")
    print(f"  bound: {s['bare_forwards']} bare decoder forward(s) of the same packed words, same arithmetic: "
          f"{s['bare_forward_s']:.3f} s -> the scan costs {s['engine_s'] / s['bare_forward_s']:.2f}x its forward")
    print(f"  the same scan in the compute dtype (--analysis-precision compute, its precision check left out): "
          f"{s['compute_precision_s']:.3f} s; bare forward in that dtype {s['bare_forward_compute_s']:.3f} s -> "
          f"{s['compute_precision_s'] / s['bare_forward_compute_s']:.2f}x")
    print(f"  {s['forwards']} forward(s), {s['padded_tokens']} tokens forwarded; to host {s['bytes_to_host'] / 1e6:.2f}"
          f" MB (the vectors would be {s['vector_bytes_if_copied'] / 1e6:.0f} MB)")
    print(f"  reference (per word, per layer) {s['reference_s_per_forward'] * 1000:.1f} ms/forward x "
          f"{s['words'] * s['layers']} forwards = {s['reference_full_s']:.1f} s"
          + (f" (extrapolated from {s['reference_sample_words']} words, {s['reference_sample_s']:.1f} s measured)"
             if s["reference_extrapolated"] else ""))
    print(f"  speed-up: {s['speedup']:.0f}x; same vectors: min cosine(engine, reference) over words x layers = "
          f"{s['min_cosine_vs_reference']:.6f} (max |component difference| {s['max_abs_diff_vs_reference']:.1e})")
    print("training step (training.train: batch 8, target layer 2, LoRA r=16 on q/v of every block):")
    print(f"  early exit {t['early_exit_ms_per_step']:.1f} ms/step, full forward {t['full_forward_ms_per_step']:.1f} "
          f"ms/step: speed-up {t['speedup']:.1f}x")
    print(f"  host syncs: {t['syncs_per_step']:.2f} per step over 20 steps ("
          + (", ".join(f"{k} x{v}" for k, v in t["sync_sites_20_steps"].items()) or "none") + ")")
    if "gpu_busy_ms_per_step" in t:
        print(f"  GPU busy {t['gpu_busy_ms_per_step']:.1f} ms of {t['profiled_ms_per_step']:.1f} ms wall per step "
              f"({100 * t['gpu_busy_share']:.0f} %)")
    print(f"  where the host time goes (profiled, {t['profiled_ms_per_step']:.1f} ms/step; self CPU ms/step):")
    for k, v in t["cpu_top_ops_ms_per_step"].items():
        print(f"    {v:7.2f}  {k}")
    if compiled:
        c = compiled
        print(f"torch.compile of the blocks before the target: {c['compiled_ms_per_step']:.1f} ms/step vs eager "
              f"{c['eager_ms_per_step']:.1f} ({c['eager_ms_per_step'] / c['compiled_ms_per_step']:.2f}x); "
              f"first 3 steps with compilation {c['first_steps_with_compile_s']:.1f} s; losses differ by up to "
              f"{c['max_loss_difference']:.1e}")
    if epochs:
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
