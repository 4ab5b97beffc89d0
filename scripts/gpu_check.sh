#!/usr/bin/env bash
# The GPU check, in ONE call of at most 9 minutes on a GPU machine (H100/H200, sm_90), from the repository
# root with the machine's own python3 (only torch, pytest, onnxruntime and ninja are assumed; TensorRT,
# Polygraphy and onnx are optional): build the fused kernels for sm_90, run the CUDA tests, benchmark the
# fused kernels (DARTS node and the PC-DARTS node on C/K channels) and the search steps (DARTS and PC-DARTS
# K=4, fused vs reference, first and second order), write JSON and print a summary table (GPU, date).
#
#   scripts/gpu_check.sh [--dry-run] [OUT_DIR]      OUT_DIR: default $OUT, else benchmarks/gpu
#
# Every step runs under its own time limit (the `step NAME SECONDS ...` lines; they add up to at most
# 540 s, checked by tests/scripts/test_gpu_check.py), and no step starts past the 520 s deadline. --dry-run runs
# the same steps on the CPU with tiny sizes and no CUDA build (the CUDA tests are collected and skip), so
# the test suite catches a broken step without a GPU. Commit a real run's JSON: cp OUT_DIR/*.json benchmarks/gpu/
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT_DIR="${1:-${OUT:-benchmarks/gpu}}"
PY="${PYTHON:-python3}"
DEADLINE=520
# The limits are the GPU call's budget. A dry run checks that every step works, not how fast a CPU shared with
# other jobs runs it (a loaded 2-core machine took 16 s for the 15 s bandwidth step): ten times the room there.
((DRY)) && DEADLINE=$((DEADLINE * 10))
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
mkdir -p "$OUT_DIR"
: > "$OUT_DIR/steps.tsv"
status=0

step() {  # step NAME SECONDS CMD...: run under a time limit (cut to the deadline), record, keep going
    local name="$1" limit="$2"; shift 2
    ((DRY)) && limit=$((limit * 10))
    local left=$((DEADLINE - SECONDS))
    if ((left < 5)); then
        echo "!! $name: skipped, past the deadline"; printf '%s\t%s\t0\tskipped\n' "$name" "$limit" >> "$OUT_DIR/steps.tsv"
        status=1; return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit} s)"
    local start=$SECONDS rc=0
    timeout -k 3 "$limit" "$@" || rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$limit" "$((SECONDS - start))" "$rc" >> "$OUT_DIR/steps.tsv"
    if ((rc != 0)); then echo "!! $name failed (exit $rc; 124 = time limit)"; status=1; fi
}

if ((DRY)); then
    DEV=(--device cpu --threads 1)
    MIX=(--batch 2 --channels 8 --size 8 --repeats 1 --warmup 0)
    BW=(--batch 2 --channels 4 --size 8 --terms 3 --repeats 1 --inner 1)
    SEARCH=(--batch-size 2 --channels 8 --layers 3 --image-size 8 --steps 1 --warmup 0)
    CUDA_BUILD=False
else
    DEV=(--device cuda)
    MIX=(--batch 64 --repeats 7 --warmup 2)
    BW=(--batch 256 --repeats 7)
    SEARCH=(--batch-size 64 --steps 4 --warmup 2)
    CUDA_BUILD=True
fi

step "environment" 10 bash -c '
    if [[ "$1" == 1 ]]; then echo "dry run: CPU, no GPU" > "$2/gpu.txt"
    else nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$2/gpu.txt"; fi
    cat "$2/gpu.txt"; "$3" -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"' \
    _ "$DRY" "$OUT_DIR" "$PY"
step "build (sm_90)" 140 "$PY" -c '
import json, sys
from nasdeploy.kernels.build import build_extension, loaded_devices
cuda = sys.argv[1] == "True"
info = build_extension(cuda=cuda, archs=("9.0",) if cuda else ())
devices = list(loaded_devices())
print("built", info.name, "in %.1f s, kernels for" % info.seconds, devices)
open(sys.argv[2], "w").write(json.dumps({**info.to_dict(), "devices": devices}, indent=2) + "\n")' \
    "$CUDA_BUILD" "$OUT_DIR/build.json"
TESTS=(tests/kernels/test_mixed_node.py tests/spaces/test_partial_channels.py)
timeout 20 "$PY" -c "import onnx" 2>/dev/null && TESTS+=(tests/export/test_tensorrt.py)  # needs onnx to collect
step "CUDA tests" 60 "$PY" -m pytest -q -rs -p no:cacheprovider -m cuda "${TESTS[@]}"
step "reduction bandwidth" 15 "$PY" scripts/bench_mixed_op.py --bandwidth "${DEV[@]}" "${BW[@]}" \
    --json "$OUT_DIR/bandwidth.json"
step "mixed op, DARTS normal cell, fusion steps" 30 "$PY" scripts/bench_mixed_op.py --impl steps "${DEV[@]}" \
    "${MIX[@]}" --json "$OUT_DIR/mixed_op_normal.json"
step "mixed op, DARTS reduction cell" 20 "$PY" scripts/bench_mixed_op.py --impl both --reduction "${DEV[@]}" \
    "${MIX[@]}" --json "$OUT_DIR/mixed_op_reduction.json"
step "mixed op, PC-DARTS K=4 cell (ops on C/K)" 20 "$PY" scripts/bench_mixed_op.py --impl both \
    --partial-channels 4 "${DEV[@]}" "${MIX[@]}" --json "$OUT_DIR/mixed_op_pcdarts.json"
step "search step, DARTS" 80 "$PY" scripts/bench_search.py --impl both --order first second \
    "${DEV[@]}" "${SEARCH[@]}" --out "$OUT_DIR/search_darts.json"
step "search step, PC-DARTS K=4" 50 "$PY" scripts/bench_search.py --impl both --order first second \
    --partial-channels 4 "${DEV[@]}" "${SEARCH[@]}" --out "$OUT_DIR/search_pcdarts.json"
# TensorRT next to onnxruntime on the same ONNX, only where TensorRT, onnx, click and Polygraphy exist.
if ((DRY == 0)) && timeout 20 "$PY" -c "import tensorrt, onnx, click" 2>/dev/null && command -v polygraphy >/dev/null; then
    step "polygraphy trt vs onnxrt" 55 bash -c '
        "$1" -m nasdeploy export DARTS_V2 --net cifar --out "$2/polygraphy_export" --overwrite &&
        polygraphy run "$2/polygraphy_export/model.onnx" --trt --onnxrt --input-shapes input:[1,3,32,32] \
            --atol 1e-4 --rtol 1e-3' _ "$PY" "$OUT_DIR"
else
    echo "== polygraphy: skipped (tensorrt, onnx, click or polygraphy not installed, or dry run)"
fi
step "summary" 10 "$PY" scripts/gpu_check_summary.py "$OUT_DIR"
exit $status
