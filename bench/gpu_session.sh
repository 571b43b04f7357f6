#!/usr/bin/env bash
# One GPU session (see docs/benchmarks.md), in parts that each fit one device call: logs land in $OUT.
# Measured on the H100 machine: tests ~140 s, kernels ~70 s, serve ~300 s, quicksweep ~200 s, sweep more than 400 s.
# serve-mini: estimated (not yet measured) at 5-7 min: two loads of the mini shape, 2 x 4 levels x (warm-up + 3 runs).
# gemma: not yet measured; one load of the 26B-A4B shape (51 GB of bf16 weights), 4 rows x 3 rounds x 8 steps.
# Usage: bash bench/gpu_session.sh [tests] [kernels] [serve] [servevaried] [servepinned] [stepgap] [sweep] [quicksweep]
#        [shorttiles] [servesteps] [serve-mini] [forward] [profile] [gemma]   (no argument: tests kernels serve)
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
parts=${*:-tests kernels serve}
for part in $parts; do
  case $part in
    tests)
      timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_attention.py tests/test_kernels_attention_window.py \
        tests/test_kernels_kv_store.py \
        tests/test_kernels_moe.py tests/test_kernels_moe_align.py tests/test_kernels_moe_lora.py tests/test_kernels_norm.py tests/test_kernels_rotary.py tests/test_kernels_sampling.py \
        tests/test_engine_triton.py tests/test_engine_graphs.py tests/test_models_dummy.py tests/test_bench_forward.py \
        2>&1 | tail -n 30 | tee "$OUT/gpu_tests.log" ;;
    forward)       # the engine step of the mini shape, eager and with CUDA graphs, against its roofline
      timeout 560 python3 bench/forward.py --batches 1,8,32,64 --contexts 512,2048,8192 --naive-contexts 512 \
        --lora-rank 16 2>&1 \
        | tee "$OUT/forward.md" ;;
    gemma)         # DiffusionGemma 26B-A4B shape: one denoising step of every canvas against its roofline
      timeout 560 python3 bench/forward_gemma.py --batches 1,8 --contexts 512,2048 2>&1 | tee "$OUT/forward_gemma.md" ;;
    profile)       # the kernel families of a graph step at batch 1 and 64 (where the step's GPU time goes)
      timeout 200 python3 bench/step_profile.py --batches 1,64 --context 512 2>&1 | tee "$OUT/profile.md" ;;
    kernels)
      timeout 150 python3 bench/kernel_bench.py 2>&1 | tee "$OUT/kernels.md"
      timeout 60 python3 bench/attention_breakdown.py 2>&1 | tee "$OUT/breakdown.md"
      timeout 60 python3 bench/attention_breakdown.py --contiguous-pages 2>&1 | tee "$OUT/breakdown_contiguous.md"
      timeout 60 python3 bench/attention_breakdown.py --new-tokens 4 2>&1 | tee "$OUT/breakdown_4_new_tokens.md"
      timeout 150 python3 bench/decode.py --requests 32 --max-tokens 64 2>&1 | tail -n 8 | tee "$OUT/decode.md" ;;
    serve)
      timeout 240 python3 bench/serve.py --model dlx/assets/dlx-tiny --device cuda --requests 192 --max-tokens 64 \
        --concurrency 1,32 --kv-pages 8192 --max-model-len 1024 --rounds 3 2>&1 | tail -n 32 | tee "$OUT/serve.md"
      timeout 150 python3 bench/serve.py --model dlx/assets/dlx-tiny --device cuda --requests 64 --max-tokens 256 \
        --concurrency 1,32 --kv-pages 8192 --max-model-len 1024 --rounds 3 --port 18322 2>&1 | tail -n 32 | tee "$OUT/serve256.md" ;;
    servevaried)   # answers of 64-256 tokens: requests finish at different steps, as real traffic does
      timeout 300 python3 bench/serve.py --model dlx/assets/dlx-tiny --device cuda --requests 128 --max-tokens 64 \
        --max-tokens-to 256 --concurrency 1,32 --kv-pages 8192 --max-model-len 1024 --rounds 3 --port 18324 2>&1 \
        | tail -n 32 | tee "$OUT/serve_varied.md" ;;
    servepinned)   # both engines on CPU 2, frontends and clients elsewhere: isolates the transport
      timeout 240 python3 bench/serve.py --model dlx/assets/dlx-tiny --device cuda --requests 192 --max-tokens 64 \
        --concurrency 1,32 --kv-pages 8192 --max-model-len 1024 --rounds 3 --pin-engines 2 --port 18323 2>&1 \
        | tail -n 32 | tee "$OUT/serve_pinned.md" ;;
    stepgap)       # does an idle gap between steps slow the next one (why the leader polls its follower window)
      timeout 120 python3 bench/step_gap.py 2>&1 | tee "$OUT/step_gap.md" ;;
    sweep)
      timeout 400 python3 bench/attention_sweep.py --cases 1x4096,8x4096,8x8192,64x4096 --prefetch both 2>&1 \
        | tee "$OUT/sweep.md" ;;
    quicksweep)
      timeout 200 python3 bench/attention_sweep.py --quick --cases 8x4096,8x8192,64x1024,64x8192,1x8192,8x1024 \
        --prefetch on --top 4 2>&1 | tee "$OUT/quicksweep.md" ;;
    shorttiles)    # split grids with short query tiles (more, lighter programs) against the current launch
      timeout 240 python3 bench/attention_sweep.py --block-q 4,8,16 --cases 8x4096,8x8192,1x4096,1x8192 \
        --prefetch on --top 6 2>&1 | tee "$OUT/short_tiles.md" ;;
    servesteps)    # answers that last 32-96 steps (one token a forward), as LLaDA2.0-mini's last 100-400
      timeout 200 python3 bench/serve.py --model dlx/assets/dlx-tiny --device cuda --requests 24 --max-tokens 32 \
        --max-tokens-to 96 --accept-threshold 1.0 --concurrency 1 --kv-pages 8192 --max-model-len 1024 --rounds 3 \
        --port 18325 2>&1 | tail -n 32 | tee "$OUT/serve_steps_c1.md"
      timeout 150 python3 bench/serve.py --model dlx/assets/dlx-tiny --device cuda --requests 192 --max-tokens 32 \
        --max-tokens-to 96 --accept-threshold 1.0 --concurrency 32 --kv-pages 8192 --max-model-len 1024 --rounds 3 \
        --port 18326 2>&1 | tail -n 32 | tee "$OUT/serve_steps_c32.md" ;;
    serve-mini)    # LLaDA2.0-mini shape, dummy weights: HTTP against in-process at concurrency 1-64, two
                   # requests per client of 32-64 tokens (~40-75 steps each at one token a forward)
      python3 -m dlx.models.shapes /tmp/dlx-mini-shape --shape mini >/dev/null
      timeout 540 python3 bench/serve.py --model /tmp/dlx-mini-shape --load-format dummy --device cuda \
        --concurrency 1,8,32,64 --requests-per-client 2 --max-tokens 32 --max-tokens-to 64 --kv-pages 1024 \
        --max-model-len 1024 --rounds 3 --port 18327 2>&1 | tee "$OUT/serve_mini.md" ;;
    *) echo "unknown part $part (tests kernels serve servevaried servepinned stepgap sweep quicksweep shorttiles"
       echo "                    servesteps serve-mini forward profile gemma)"
       exit 2 ;;
  esac
done
