#!/usr/bin/env bash
# Kernel bench on a CUDA machine: the numba.cuda and torch backends on the GPU, with
# torch.randperm and torch.multinomial on the same device as baselines, plus the numba CPU backend
# for comparison. Writes bench/results/kernels-gpu.json (and prints the table).
#
#   bash bench/gpu_kernels.sh            # full sizes (10^5 .. 10^8)
#   QUICK=1 bash bench/gpu_kernels.sh    # 10^5 and 10^6 only
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, numba.cuda; assert torch.cuda.is_available() and numba.cuda.is_available(), 'no CUDA device'"
quick=()
[ "${QUICK:-0}" = "1" ] && quick=(--quick)
out="${OUT:-bench/results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
sadp-data bench kernels "${quick[@]}" --no-progress --backends cuda,torch --device cuda --json "$out/kernels-gpu.json"
sadp-data bench kernels "${quick[@]}" --no-progress --backends numba --json "$out/kernels-gpu-host-cpu.json"
