#!/usr/bin/env bash
# Every GPU check issues 5, 8 and 13 still need, as one prepared command for a session that is lent a
# GPU (the GPU image lacks sae-lens, this package and pytest). Prepare on the CPU machine, from the
# project's root:
#   ../shared/gpu/fetch-wheels.sh
#   python3 -m pip wheel -q --no-deps -w .whl .                 # this package, as it is now
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl pytest iniconfig
# then run it there in one call (device tool): command "bash benchmarks/gpu_session.sh",
# carry [".whl"], timeout_s 580. Each step has its own time limit, so a slow one cannot starve the
# rest (about 560 s of limits in all); everything it prints is also written under $OUT.
set -uo pipefail
out=${OUT:-gpu-session}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl
export PYTHONPATH=$PWD/.site:$PWD HF_HUB_OFFLINE=1 WANDB_MODE=disabled TQDM_DISABLE=1

step() {  # step NAME SECONDS COMMAND...: run with a limit, keep the output, go on on failure
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]}"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# Issues 8 and 13: the sparse path against the dense reference on CUDA (loss, gradients, weights
# after steps); a preset config trained on CUDA with every tensor on the GPU.
step gpu-tests 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/training/test_fast_path.py \
  tests/presets/test_one_path.py
# Issue 13: the one training path on the GPU: the CLI in one process, then as a one-rank torchrun
# job (NCCL, LOCAL_RANK's device), both with the device audit of the first step.
step train-cuda 60 python3 -m saelens_gemmascope.cli train tiny-gemma-2/res/layer_1/width_512 --device cuda \
  --l0-coefficients 1e-3,1e-2 --set training_tokens=51200 --checkpoints 1 --output "$out/train-cuda"
step train-cuda-torchrun 60 python3 -m torch.distributed.run --standalone --nproc-per-node 1 \
  -m saelens_gemmascope.cli train tiny-gemma-2/res/layer_1/width_512 --device cuda --distributed data \
  --l0-coefficients 1e-3,1e-2 --set training_tokens=51200 --checkpoints 1 --output "$out/train-torchrun"
# Issue 8: one step, SAELens vs recipe dense/sparse/auto at d_sae 16k and 64k, batch 4096, L0 100,
# then the pipeline (random-weight Gemma 2 2B to the middle layer, 1 SAE and a ladder of 6).
step bench-step-fp32 170 python3 benchmarks/bench_step.py --device cuda --precision fp32
step bench-step-tf32 40 python3 benchmarks/bench_step.py --device cuda --precision tf32 --no-pipeline
step bench-step-bf16 40 python3 benchmarks/bench_step.py --device cuda --precision bf16 --no-pipeline
# Issue 8: where "auto" should switch on CUDA (its cut-off is unset until measured): the sparse
# path against the dense one at rising L0 (density = L0 / 16384).
for l0 in 330 820 1640; do
  step "bench-step-l0-$l0" 30 python3 benchmarks/bench_step.py --device cuda --precision fp32 \
    --d-sae 16384 --l0 "$l0" --steps 10 --no-pipeline
done
# Issue 5: N SAEs on one forward pass vs N separate runs on a random-weight Gemma 2 2B.
step bench-suite 100 python3 benchmarks/bench_suite.py --model gemma-2-2b-random --device cuda --n 1,4,16 \
  --tokens 102400
