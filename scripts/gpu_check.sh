#!/usr/bin/env bash
# One call on a GPU machine (H100/H200): build the fused kernels for sm_90, run the CUDA tests, run the
# benchmarks (fused vs reference in the same run), print a short table and write JSON.
# About 6-8 minutes. Usage: scripts/gpu_check.sh [OUT_DIR]   (default: $OUT, else benchmarks/gpu)
# Commit the results: cp -r OUT_DIR/*.json benchmarks/gpu/ (see benchmarks/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/gpu}}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
status=0
step() {  # step NAME SECONDS CMD...: run with a time limit, keep going, remember failures
    local name="$1" limit="$2"; shift 2
    echo "== $name"
    if ! timeout "$limit" "$@"; then echo "!! $name failed or timed out"; status=1; fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt"
step "build (sm_90)" 300 "$PY" -m nasdeploy build-ext --cuda --arch 9.0 --json "$OUT_DIR/build.json"
step "CUDA tests" 180 "$PY" -m pytest -q -rs -m cuda tests/test_kernels_mixed_node.py tests/test_export_tensorrt.py
# TensorRT next to onnxruntime on the same ONNX, where TensorRT and Polygraphy are installed (optional).
if "$PY" -c "import tensorrt" 2>/dev/null && command -v polygraphy >/dev/null; then
    step "export for polygraphy" 120 "$PY" -m nasdeploy export DARTS_V2 --net cifar --out "$OUT_DIR/polygraphy_export" --overwrite
    step "polygraphy trt vs onnxrt" 240 polygraphy run "$OUT_DIR/polygraphy_export/model.onnx" --trt --onnxrt \
        --input-shapes input:[1,3,32,32] --atol 1e-4 --rtol 1e-3
else
    echo "== polygraphy: skipped (tensorrt or polygraphy not installed)"
fi
step "reduction bandwidth" 60 "$PY" scripts/bench_mixed_op.py --device cuda --bandwidth --batch 256 \
    --repeats 9 --json "$OUT_DIR/bandwidth.json"
step "mixed op, fusion steps" 90 "$PY" scripts/bench_mixed_op.py --device cuda --impl steps --batch 64 \
    --repeats 9 --json "$OUT_DIR/mixed_op_normal.json"
step "mixed op, reduction cell" 60 "$PY" scripts/bench_mixed_op.py --device cuda --impl both --batch 64 \
    --size 16 --reduction --repeats 9 --json "$OUT_DIR/mixed_op_reduction.json"
step "search step, first + second order" 330 "$PY" scripts/bench_search.py --device cuda --impl both \
    --order first second --batch-size 64 --steps 8 --warmup 2 --out "$OUT_DIR/search.json"

"$PY" - "$OUT_DIR" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
rows = []
bw = load("bandwidth.json")
if bw:
    r = bw["results"]
    rows.append(("reduction kernel bandwidth", f"{r['reduce_GBps']:.0f} GB/s = {100 * r['fraction_of_copy']:.0f}% of copy", ">= 80%"))
for name, label in (("mixed_op_normal.json", "mixed op fwd+bwd (normal)"), ("mixed_op_reduction.json", "mixed op fwd+bwd (reduction)")):
    d = load(name)
    if d and "fused" in d["results"]:
        f = d["results"]["fused"]
        rows.append((label, f"{f['speedup_vs_reference']:.2f}x speed, {f.get('peak_bytes_vs_reference', float('nan')):.2f}x peak mem", ""))
d = load("search.json")
for c in (d or {}).get("comparisons", []):
    rows.append((f"search step, {c['order']} order", f"{c['speedup']:.2f}x img/s, {c['peak_memory_ratio']:.2f}x peak mem", ">= 2x, <= 0.7x"))
gpu = (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").exists() else "?"
print(f"\n{gpu}")
for what, got, target in rows:
    print(f"{what:<32}{got:<44}{target}")
(out / "summary.json").write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=2))
EOF
exit $status
