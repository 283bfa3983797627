#!/usr/bin/env bash
# Device check of the CUDA build: kiln on the GPU against PyTorch on the same machine.
#
#   CUDARC_CUDA_VERSION=12080 cargo build --offline --release --features cuda --bin kiln
#   strip -o /tmp/kiln-cuda target/release/kiln && xz -c /tmp/kiln-cuda > .gpubin/kiln-cuda.xz
#   (on the GPU machine, from the repository root)  OUT=results bash benches/cuda_check.sh
#
# Finds the real libnvrtc (not the toolkit's stubs/ copy, which makes the first NVRTC call
# return garbage), then runs: the 743K benchmark model (`kiln bench`), the default recipe with
# progress every 2 steps, and benches/torch_reference.py for the same model. Writes logs and
# JSON into $OUT.
set -u
O=${OUT:-cuda-results}
mkdir -p "$O"
f=$(find / -xdev -name 'libnvrtc.so*' 2>/dev/null | grep -v -e builtins -e stubs | head -1)
echo "nvrtc: $f"
export LD_LIBRARY_PATH=$(dirname "$f"):/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
KILN=${KILN:-/tmp/kiln}
[ -x "$KILN" ] || { xz -dc .gpubin/kiln-cuda.xz > "$KILN" && chmod +x "$KILN"; }
SMALL=(--set task.context=128 --set model.vars.d_model=128 --set model.vars.depth=4
       --set model.vars.heads=4 --set model.vars.kv_heads=2 --set model.vars.d_ff=344
       --set train.batch_size=32)
t0=$SECONDS
timeout "${STEP_TIMEOUT:-150}" "$KILN" bench recipes/uint16-prng.yaml "${SMALL[@]}" --device cuda \
    --warmup 3 --steps 20 --gen-tokens 64 > "$O/bench_small_cuda.json" 2> "$O/bench_small_cuda.err"
echo "kiln bench rc=$? in $((SECONDS - t0)) s"; cat "$O/bench_small_cuda.json"
t0=$SECONDS
CUBECL_DEBUG_LOG=$O/cubecl.log timeout "${STEP_TIMEOUT:-150}" "$KILN" train recipes/default.yaml \
    --device cuda --set train.steps=60 --set 'train.schedule={type: constant}' \
    --set train.eval_every=2 --out /tmp/kiln-cuda-run > "$O/train_default_cuda.log" 2>&1
echo "kiln train rc=$? in $((SECONDS - t0)) s"; grep -E '^step' "$O/train_default_cuda.log" | tail -3
echo "kernel compilations logged: $(grep -c 'END_KERNEL_COMPILATION' "$O/cubecl.log" 2>/dev/null)"
t0=$SECONDS
timeout 90 python3 benches/torch_reference.py --device cuda --steps 30 > "$O/torch_small.json" 2>&1
echo "torch rc=$? in $((SECONDS - t0)) s"; cat "$O/torch_small.json"
