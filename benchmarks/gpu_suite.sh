#!/usr/bin/env bash
# Everything in nfx that needs a GPU, as one command (≤ 10 minutes on one H100/H200):
#   bash benchmarks/gpu_suite.sh            # from the repository root, with the project's venv active
#                                           # (or NFX_PY=/path/to/python)
# Steps, each under its own time limit so one slow step cannot eat the others' (seconds):
#   1. pytest -m gpu tests/test_gpu.py      fp16/bf16 AGC decisions, AMP, CUDA paths (60)
#   2. bench_agc.py                          AGC call time per model vs the copy bandwidth (90)
#   3. bench_train.py --gpu-suite            nfx loop vs raw step, NF vs EfficientNet, torch.compile (180)
#   4. bench_persample.py                    per-sample AGC: one-pass / vmap vs a standard step (120)
#   5. bench_inference.py                    ONNX Runtime (CUDA provider when installed) vs torch (60)
#   6. with 2+ GPUs: pytest -m slow tests/test_distributed.py, the 2-process DDP runs (90)
# Steps 2-5 write the CUDA sub-sections of docs/BENCHMARKS.md (quoting the device); the log of every
# step is written to $OUT (default gpu-suite-logs/) and a summary line per step is printed at the end.
set -u
PY=${NFX_PY:-python}
OUT=${OUT:-gpu-suite-logs}
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "error: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); run this on the GPU machine" >&2
    exit 1
fi
mkdir -p "$OUT"
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
summary=()
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    local what="ok"
    [ $rc -eq 124 ] && what="TIMED OUT after ${limit}s"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && what="FAILED (exit $rc)"
    summary+=("$name: $what in $((SECONDS - t0)) s (log: $OUT/$name.log)")
    echo "${summary[-1]}"
}
step gpu-tests 60 "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider
step agc 90 "$PY" benchmarks/bench_agc.py
step train 180 "$PY" benchmarks/bench_train.py --gpu-suite --rounds 1
step persample 120 "$PY" benchmarks/bench_persample.py --models nf_resnet26,eca_nfnet_l0,dm_nfnet_f0
step inference 60 "$PY" benchmarks/bench_inference.py
if [ "$NGPU" -ge 2 ]; then
    step ddp 90 "$PY" -m pytest -q -m slow tests/test_distributed.py -p no:cacheprovider
else
    summary+=("ddp: skipped ($NGPU GPU visible; the 2-process run needs 2)")
    echo "${summary[-1]}"
fi
cp docs/BENCHMARKS.md "$OUT/BENCHMARKS.md"  # the CUDA sub-sections, for machines that return only $OUT
echo
echo "GPU suite on $("$PY" -c "import torch; print(torch.cuda.get_device_name(0))") ($NGPU visible):"
printf '  %s\n' "${summary[@]}"
grep -q "FAILED\|TIMED OUT" <<<"${summary[*]}" && exit 1
exit 0
