#!/usr/bin/env bash
# The one GPU check (issue 24): kiln's CUDA builds against PyTorch on the same machine and the
# same models, in under 8 minutes, from prebuilt binaries (the GPU machine builds nothing and
# downloads nothing). Every log, JSON result and the summary go into the folder given.
#
#   bash benches/gpu_check.sh OUT_DIR            # on the GPU machine, from a checkout
#   bash benches/gpu_check.sh --dry-run OUT_DIR  # anywhere: the CPU build, tiny sizes
#
# The binaries (built on the build machine, stripped and xz-compressed to ~10 MiB each; the
# exact commands are in docs/reference/gpu.md):
#   KILN        unfused CUDA build  (default .gpubin/kiln-cuda, or .gpubin/kiln-cuda.xz)
#   KILN_FUSED  CUDA build with Burn's fusion and autotune
#               (default .gpubin/kiln-cuda-fused, or its .xz)
# In a dry run both default to target/debug/kiln and run on the CPU.
# Other settings: DEVICE (cuda; gpu for the Vulkan builds), BUDGET_S (470: runs that no longer
# fit are skipped and listed), PYTHON (python3, with torch for the reference rows).
#
# What runs, in this order (each kiln run in a work folder with a cubecl.toml that logs every
# kernel compilation and keeps CubeCL's caches, so a second run there is the warm-cache run):
#   torch_d128_f32, torch_d128_bf16, torch_default_f32    benches/torch_reference.py --device cuda
#   kiln_d128_f32_cold, kiln_d128_f32_warm                 unfused build, d 128 model
#   kiln_default_f32_cold, kiln_default_f32_warm           unfused build, recipes/default.yaml
#   kiln_default_f32_nopad                                 the same, lengths not padded (--pad-to 1)
#   kiln_d128_f32_fused_cold, kiln_d128_f32_fused_warm     fused build, d 128 model
#   kiln_d128_bf16                                         unfused build, mixed bf16
#   kiln_default_train                                     `kiln train` of the default recipe
#   kiln_d128_gen_growing                                  generation with the growing KV cache
#                                                          (the others preallocate it on a GPU)
# Each `kiln bench` also times cached generation (--gen-tokens). OUT_DIR then holds NAME.json
# and NAME.err per run, runs.tsv (name, exit status, seconds, kernels compiled),
# env.txt (GPU, driver, binaries) and summary.md (one row per run; needs python3).
set -u

usage() {
    sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

DRY=0
OUT=
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) [ -z "$OUT" ] || { echo "error: one output folder, not $OUT and $1" >&2; exit 2; }
           OUT=$1 ;;
    esac
    shift
done
[ -n "$OUT" ] || { echo "error: give the output folder" >&2; usage >&2; exit 2; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
BUDGET=${BUDGET_S:-470}
if [ $DRY = 1 ]; then
    DEVICE=cpu
    TORCH_DEVICE=cpu
    KILN=${KILN:-$REPO/target/debug/kiln}
    KILN_FUSED=${KILN_FUSED:-$KILN}
    # Tiny sizes: the plumbing, not the speed.
    TINY=(--set train.batch_size=2 --set task.context=16)
    TINY_DEFAULT=(--set train.batch_size=2 --set task.max_length=8)
    BENCH=(--warmup 1 --steps 2 --gen-tokens 4 --gen-batch 1)
    GEN=(--warmup 0 --steps 1 --gen-tokens 4 --gen-batch 1)
    TORCH=(--warmup 1 --steps 1 --gen-tokens 4 --gen-batch 1 --threads 1)
    TORCH_D128=(--seq 16 --batch 2)
    TORCH_DEFAULT=(--seq 8 --batch 2)
    TRAIN=(--set train.steps=4 --set train.eval_every=2 --set task.max_length=8
           --set 'train.schedule={type: constant}')
    COLD=60 WARM=60 TORCH_S=60 TRAIN_S=60
else
    DEVICE=${DEVICE:-cuda}
    TORCH_DEVICE=cuda
    KILN=${KILN:-$REPO/.gpubin/kiln-cuda}
    KILN_FUSED=${KILN_FUSED:-$REPO/.gpubin/kiln-cuda-fused}
    TINY=()
    TINY_DEFAULT=()
    BENCH=(--warmup 5 --steps 30 --gen-tokens 256 --gen-batch 4)
    GEN=(--warmup 0 --steps 1 --gen-tokens 256 --gen-batch 4)
    TORCH=(--warmup 5 --steps 30 --gen-tokens 256 --gen-batch 4)
    TORCH_D128=(--seq 128 --batch 32)
    TORCH_DEFAULT=(--seq 64 --batch 32)
    TRAIN=(--set train.steps=200)
    COLD=${COLD_S:-75} WARM=${WARM_S:-45} TORCH_S=${TORCH_S:-45} TRAIN_S=${TRAIN_S:-60}
fi

# A binary given as NAME or NAME.xz, which must run `--device $DEVICE`.
binary() { # what, path, how to build it
    local what=$1 path=$2 build=$3
    if [ ! -x "$path" ] && [ -f "$path.xz" ]; then
        xz -dc "$path.xz" > "$path" && chmod +x "$path" ||
            { echo "error: cannot unpack $path.xz" >&2; exit 2; }
    fi
    if [ ! -x "$path" ]; then
        echo "error: no $what binary at $path (nor $path.xz); build it with: $build" >&2
        exit 2
    fi
    # clap lists the devices this build has.
    local devices
    devices=$("$path" bench /dev/null --device '?' 2>&1 | grep -o 'possible values: [a-z, ]*')
    case " ${devices#possible values: }," in
        *" $DEVICE,"*) ;;
        *) echo "error: $path cannot run --device $DEVICE (${devices:-it lists no devices}); build it with: $build" >&2
           exit 2 ;;
    esac
}
if [ $DRY = 1 ]; then
    binary "kiln" "$KILN" "cargo build"
    binary "kiln" "$KILN_FUSED" "cargo build"
else
    binary "unfused $DEVICE" "$KILN" "cargo build --release --features $DEVICE,gpu-cache"
    binary "fused $DEVICE" "$KILN_FUSED" \
        "cargo build --release --features $DEVICE,gpu-cache,gpu-fusion,gpu-autotune"
fi

mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
: > "$OUT/runs.tsv"
{
    date -u '+%Y-%m-%dT%H:%M:%SZ'
    echo "dry run: $DRY; device: $DEVICE"
    echo "unfused: $KILN ($("$KILN" --version 2>&1))"
    echo "fused:   $KILN_FUSED ($("$KILN_FUSED" --version 2>&1))"
} > "$OUT/env.txt"
if [ "$DEVICE" = cuda ]; then
    # The real libnvrtc (the toolkit's stubs/ copy returns garbage) and the CUDA headers NVRTC
    # includes ($CUDA_PATH/include).
    nvrtc=$(find / -xdev -name 'libnvrtc.so*' 2>/dev/null | grep -v -e builtins -e stubs | head -1)
    [ -n "$nvrtc" ] || { echo "error: no libnvrtc.so on this machine" >&2; exit 2; }
    export LD_LIBRARY_PATH=$(dirname "$nvrtc"):/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
    if [ -z "${CUDA_PATH:-}" ]; then
        root=$(dirname "$nvrtc")
        while [ "$root" != / ] && [ ! -f "$root/include/cuda.h" ]; do root=$(dirname "$root"); done
        [ "$root" = / ] || export CUDA_PATH=$root
    fi
    {
        echo "nvrtc: $nvrtc; CUDA_PATH: ${CUDA_PATH:-unset}"
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    } >> "$OUT/env.txt" 2>&1
fi
cat "$OUT/env.txt"

# A work folder whose cubecl.toml logs each compilation to compile.log and keeps CubeCL's
# caches (compiled kernels with the gpu-cache feature, autotune results) under target/.
workdir() {
    local d=$OUT/work/$1
    mkdir -p "$d"
    [ -f "$d/cubecl.toml" ] || cat > "$d/cubecl.toml" <<'EOF'
[compilation]
cache = true

[compilation.logger]
level = "basic"
file = "compile.log"
append = true
EOF
    echo "$d"
}

compiled() { # the kernels compile.log in folder $1 records
    if [ -f "$1/compile.log" ]; then
        grep -c -e '\[Compiling kernel\]' -e '\[START_KERNEL_COMPILATION\]' "$1/compile.log"
    else
        echo 0
    fi
}

SKIPPED=()
run() { # name, work folder, timeout, command...
    local name=$1 dir=$2 limit=$3
    shift 3
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 20 ]; then
        echo "== $name: skipped (${left} s of the ${BUDGET} s budget left)"
        SKIPPED+=("$name")
        printf '%s\tskipped\t0\t0\n' "$name" >> "$OUT/runs.tsv"
        return
    fi
    [ "$limit" -le "$left" ] || limit=$left
    echo "== $name (at most ${limit} s): $*"
    local before t0=$SECONDS rc
    before=$(compiled "$dir")
    (cd "$dir" && timeout "$limit" "$@") > "$OUT/$name.json" 2> "$OUT/$name.err"
    rc=$?
    local n=$(($(compiled "$dir") - before))
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$n" >> "$OUT/runs.tsv"
    echo "   exit $rc in $((SECONDS - t0)) s, $n kernels compiled"
    tail -2 "$OUT/$name.err" | sed 's/^/   /'
}

R=$REPO/recipes
# The model of benches/train.rs's large case and of torch_reference.py's defaults: d 128,
# 4 layers, 4 query / 2 key-value heads, SwiGLU 344, vocab 64, 128 tokens, batch 32.
D128=(--set task.context=128 --set model.vars.d_model=128 --set model.vars.depth=4
      --set model.vars.heads=4 --set model.vars.kv_heads=2 --set model.vars.d_ff=344
      --set train.batch_size=32 "${TINY[@]}")
TORCH_REF=("$PYTHON" "$REPO/benches/torch_reference.py" --device "$TORCH_DEVICE" "${TORCH[@]}")
# recipes/default.yaml's model: transformer-modern at its own vars, 5 symbols, 64 tokens.
TORCH_DEF=(--model transformer-modern --vocab 5 "${TORCH_DEFAULT[@]}")
torch_dir=$(workdir torch)
run torch_d128_f32 "$torch_dir" "$TORCH_S" "${TORCH_REF[@]}" "${TORCH_D128[@]}"
run torch_d128_bf16 "$torch_dir" "$TORCH_S" "${TORCH_REF[@]}" "${TORCH_D128[@]}" --precision bf16
run torch_default_f32 "$torch_dir" "$TORCH_S" "${TORCH_REF[@]}" "${TORCH_DEF[@]}"

B=(bench --device "$DEVICE" "${BENCH[@]}" --compile-log compile.log)
d=$(workdir d128)
run kiln_d128_f32_cold "$d" "$COLD" "$KILN" "${B[@]}" "$R/uint16-prng.yaml" "${D128[@]}"
run kiln_d128_f32_warm "$d" "$WARM" "$KILN" "${B[@]}" "$R/uint16-prng.yaml" "${D128[@]}"
d=$(workdir default)
run kiln_default_f32_cold "$d" "$COLD" "$KILN" "${B[@]}" "$R/default.yaml" "${TINY_DEFAULT[@]}"
run kiln_default_f32_warm "$d" "$WARM" "$KILN" "${B[@]}" "$R/default.yaml" "${TINY_DEFAULT[@]}"
d=$(workdir d128-fused)
run kiln_d128_f32_fused_cold "$d" "$COLD" "$KILN_FUSED" "${B[@]}" "$R/uint16-prng.yaml" "${D128[@]}"
run kiln_d128_f32_fused_warm "$d" "$WARM" "$KILN_FUSED" "${B[@]}" "$R/uint16-prng.yaml" "${D128[@]}"
d=$(workdir d128)
run kiln_d128_bf16 "$d" "$COLD" "$KILN" "${B[@]}" --precision bf16 "$R/uint16-prng.yaml" "${D128[@]}"
d=$(workdir default)
rm -rf "$OUT/run-default"
run kiln_default_train "$d" "$TRAIN_S" "$KILN" train "$R/default.yaml" --device "$DEVICE" \
    "${TRAIN[@]}" --out "$OUT/run-default"
# The growing KV cache (a new shape per token) against the other runs' preallocated one.
d=$(workdir d128)
run kiln_d128_gen_growing "$d" "$WARM" "$KILN" bench --device "$DEVICE" "${GEN[@]}" \
    --kv-cache growing --compile-log compile.log "$R/uint16-prng.yaml" "${D128[@]}"
# Last (the first to be skipped for time): the default recipe's 65 positions unpadded,
# against the GPU default (padded to 80).
d=$(workdir default)
run kiln_default_f32_nopad "$d" "$WARM" "$KILN" "${B[@]}" --pad-to 1 "$R/default.yaml" \
    "${TINY_DEFAULT[@]}"

# One row per run: its exit status and time, kernels compiled, and the numbers of its JSON.
"$PYTHON" - "$OUT" <<'EOF' || echo "(no summary: $PYTHON failed)"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
keys = ["train_steps_per_s", "train_step_ms_median", "steady_step_ms_median",
        "last_step_compiling", "gen_tokens_per_s", "gen_kv_cache", "params"]
rows = ["| run | exit | s | kernels compiled | warm-up s | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 5) + "|"]
for line in (out / "runs.tsv").read_text().splitlines():
    name, rc, secs, compiled = line.split("\t")
    try:
        d = json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        d = {}
    fmt = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
    warm = d.get("warmup_step_ms")
    warm = sum(warm) / 1e3 if isinstance(warm, list) else None
    rows.append(f"| {name} | {rc} | {secs} | {compiled} | {fmt(warm)} | "
                + " | ".join(fmt(d.get(k)) for k in keys) + " |")
(out / "summary.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
EOF
du -sh "$OUT/work" 2>/dev/null | sed 's/^/caches and logs: /'
echo "total ${SECONDS} s; everything is in $OUT"
[ ${#SKIPPED[@]} = 0 ] || echo "skipped for time: ${SKIPPED[*]}"
