#!/usr/bin/env bash
# One GPU session (see docs/benchmarks.md): GPU tests, kernel, decoding and serving benchmarks, logs in $OUT.
# Missing Python packages travel as wheels in .whl/ (see the device notes); run from the repository root.
set -o pipefail
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/dlx-gpu-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/card.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_attention.py tests/test_kernels_kv_store.py tests/test_kernels_moe.py \
  tests/test_kernels_norm.py tests/test_kernels_rotary.py tests/test_kernels_sampling.py tests/test_engine_triton.py 2>&1 | tail -n 30 | tee "$OUT/gpu_tests.log"
timeout 150 python3 bench/kernels.py 2>&1 | tee "$OUT/kernels.md"
timeout 150 python3 bench/decode.py --requests 32 --max-tokens 64 2>&1 | tail -n 8 | tee "$OUT/decode.md"
timeout 240 python3 bench/serve.py --model dlx/assets/dlx-tiny --device cuda --requests 64 --max-tokens 64 \
  --concurrency 1,32 --kv-pages 8192 --max-model-len 1024 2>&1 | tail -n 20 | tee "$OUT/serve.md"
timeout 200 python3 bench/serve.py --model dlx/assets/dlx-tiny --device cuda --requests 32 --max-tokens 256 \
  --concurrency 1,32 --kv-pages 8192 --max-model-len 1024 --port 18322 2>&1 | tail -n 20 | tee "$OUT/serve256.md"
