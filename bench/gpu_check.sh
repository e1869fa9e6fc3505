#!/usr/bin/env bash
# There, in one call (see bench/README.md): the carried wheels into /tmp/site, then the 8B-shaped bench.
# Prepared here by bench/prepare_gpu.sh; writes bench_gpu.txt and bench_gpu.json to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 OUT="${OUT:-/tmp}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH="/tmp/site:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/bench_gpu.txt"
python3 -c "import torch, transformers, peft, bitsandbytes; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__)" | tee -a "$OUT/bench_gpu.txt"
python3 bench/bench_tli.py --model llama3-8b-random --device cuda --tokenizer bench/tokenizer/tokenizer.json \
  --ref-words 8 --repeats 5 --steps 20 --compile --json "$OUT/bench_gpu.json" 2>&1 | grep -v '^USDT' | tee -a "$OUT/bench_gpu.txt"
