#!/usr/bin/env bash
# GPU check: kiln (Vulkan build) against PyTorch on the same machine, same models.
#
#   cargo build --release --features gpu --bin kiln      # on the build machine
#   KILN=target/release/kiln OUT=results bash benches/gpu_check.sh
#
# For the CUDA build (`--features cuda`), set KILN_DEVICE=cuda.
#
# Needs a Vulkan loader (libvulkan1) and the NVIDIA driver's Vulkan ICD on the GPU machine;
# PyTorch with CUDA for the reference rows (skipped when torch is missing). Appends every
# measurement to $OUT/results.jsonl (one JSON object per line, with its name) and prints a log.
set -u
KILN=${KILN:-target/release/kiln}
OUT=${OUT:-gpu-results}
DEV=${KILN_DEVICE:-gpu}
mkdir -p "$OUT"

# The model of benches/train.rs's large case and of benches/torch_reference.py's defaults:
# d 128, 4 layers, 4 query / 2 KV heads, SwiGLU 344, vocab 64, 128 tokens, batch 32.
SMALL=(--set task.context=128 --set model.vars.d_model=128 --set model.vars.depth=4
       --set model.vars.heads=4 --set model.vars.kv_heads=2 --set model.vars.d_ff=344
       --set train.batch_size=32)
# A larger one: d 512, 8 layers, 8 / 2 heads, SwiGLU 1376, 512 tokens, batch 32.
LARGE=(--set task.context=512 --set model.vars.d_model=512 --set model.vars.depth=8
       --set model.vars.heads=8 --set model.vars.kv_heads=2 --set model.vars.d_ff=1376
       --set train.batch_size=32)
TORCH_SMALL=(--d-model 128 --depth 4 --heads 4 --kv-heads 2 --d-ff 344 --seq 128 --batch 32)
TORCH_LARGE=(--d-model 512 --depth 8 --heads 8 --kv-heads 2 --d-ff 1376 --seq 512 --batch 32)
RECIPE=recipes/uint16-prng.yaml

run() { # name, command...
    local name=$1; shift
    echo "== $name: $*"
    local t0=$SECONDS
    timeout "${STEP_TIMEOUT:-150}" "$@" > /tmp/kiln-gpu-$name.json 2> /tmp/kiln-gpu-$name.err
    echo "   rc=$? in $((SECONDS - t0)) s"; tail -3 /tmp/kiln-gpu-$name.err
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["name"]=sys.argv[2]; print(json.dumps(d))' \
        /tmp/kiln-gpu-$name.json "$name" | tee -a "$OUT/results.jsonl" || cat /tmp/kiln-gpu-$name.json
}

run kiln_small_f32  "$KILN" bench $RECIPE "${SMALL[@]}" --device $DEV --steps 30 --gen-tokens 256
run torch_small_f32 python3 benches/torch_reference.py --device cuda "${TORCH_SMALL[@]}" --steps 30
run kiln_small_bf16 "$KILN" bench $RECIPE "${SMALL[@]}" --device $DEV --precision bf16 --steps 30 --gen-tokens 256
run torch_small_bf16 python3 benches/torch_reference.py --device cuda --precision bf16 "${TORCH_SMALL[@]}" --steps 30
echo "== default recipe trained on the GPU"
t0=$SECONDS
timeout "${STEP_TIMEOUT:-150}" "$KILN" train recipes/default.yaml --device $DEV --out /tmp/kiln-gpu-run-default > /tmp/kiln-gpu-train.log 2>&1
echo "   rc=$? in $((SECONDS - t0)) s"; tail -12 /tmp/kiln-gpu-train.log
run kiln_large_f32  "$KILN" bench $RECIPE "${LARGE[@]}" --device $DEV --steps 20 --gen-tokens 128
run torch_large_f32 python3 benches/torch_reference.py --device cuda "${TORCH_LARGE[@]}" --steps 20 --gen-tokens 128
run kiln_large_bf16 "$KILN" bench $RECIPE "${LARGE[@]}" --device $DEV --precision bf16 --steps 20 --gen-tokens 128
run torch_large_bf16 python3 benches/torch_reference.py --device cuda --precision bf16 "${TORCH_LARGE[@]}" --steps 20 --gen-tokens 128
