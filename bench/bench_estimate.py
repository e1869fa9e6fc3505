"""How honest the announced time is (issue 23 item 3): the demo model's first run on this machine, announced from
a calibration (no earlier run), against the time it took; and the time left a fifth of the way through against the
time that was really left. Ratios, so the figure does not depend on how fast this machine is.

    .venv/bin/python bench/bench_estimate.py [--trained 96] [--epochs 2] [--repeats 2]

Float32 compute on the CPU (see bench/README.md on bf16 without matrix units), one protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tli_core.config import TLIConfig  # noqa: E402
from tli_core.estimate import calibrate, estimate_run, remaining  # noqa: E402
from tli_core.models import ModelSpec, load_model  # noqa: E402
from tli_core.runs import create_run  # noqa: E402
from tli_core.worker import execute  # noqa: E402


def one(trained: int, epochs: int) -> dict:
    config = TLIConfig(model=ModelSpec(compute_dtype="float32", device="cpu"), trained_subset=trained,
                       control_subset=16, epochs=epochs, batch_size=8, warmup_steps=1, protocols=["studio"])
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        run = create_run(config, runs)
        lm = load_model(config.model)
        calibrate(lm, config, run.pairs("trained"), runs)
        est = estimate_run(config, trained, 16, runs, lm.facts.num_layers)
        est = dataclasses.replace(est, phases={k: v for k, v in est.phases.items() if k != "loading model"})
        seen = []

        def progress(phase, done, total, detail=""):
            seen.append((time.monotonic(), remaining(run.raw_status(), est)))

        start = time.monotonic()
        assert execute(run, progress=progress, lm=lm)["state"] == "done"
        end = time.monotonic()
    took = end - start
    out = {"announced_s": est.total, "took_s": took, "announced_over_took": est.total / took}
    for share in (0.2, 0.5):
        t, left = min(seen, key=lambda s: abs(s[0] - start - share * took))
        out[f"left_at_{share:.0%}_over_real"] = left / (end - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trained", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    print(f"CPU: {platform.processor() or platform.machine()}; demo model, float32, {a.trained} trained pairs, "
          f"{a.epochs} epochs")
    for i in range(a.repeats):
        r = one(a.trained, a.epochs)
        print(f"run {i + 1}: announced {r['announced_s']:.1f} s, took {r['took_s']:.1f} s "
              f"(ratio {r['announced_over_took']:.2f}); time left at 20 %: ratio {r['left_at_20%_over_real']:.2f}, "
              f"at 50 %: {r['left_at_50%_over_real']:.2f}")


if __name__ == "__main__":
    main()
