#!/usr/bin/env bash
# The GPU bench in one run (under 8 min on one H100): plan_epoch (numba.cuda, torch) against torch.randperm and
# torch.multinomial at N = 10^6 .. 10^9 with the share of the measured copy-bandwidth bound; scorer.step's share of
# a spiking_resnet18 / sew_resnet18 training step (batch 128, T = 4, 3x32x32); a keep-0.5 epoch through wrap
# against keep 1.0 (measured speedup / theoretical). Writes bench/results/gpu.json (the device name included).
#
#   bash bench/gpu.sh              # on a CUDA machine
#   bash bench/gpu.sh --dry-run    # the same code at tiny sizes on the CPU (numba.cuda simulated), any machine
#
# Nothing is downloaded at run time. Where the library or spikingjelly does not import, they are installed from
# the package registry first (spikingjelly with --no-deps, as the README's set-up does; torchvision is not
# installed: a stub stands in for the zoo's pretrained-weight import). PYTHON names the interpreter (default
# python3); OUT a results folder instead of bench/results; extra arguments go to python -m sadp_data.bench.gpu.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if ! "$python" -c "import sadp_data, spikingjelly.activation_based, loguru" 2>/dev/null; then
    "$python" -m pip install --quiet -e ".[snn]"
    "$python" -m pip install --quiet --no-deps spikingjelly==2.0.0
fi
if [ "${1:-}" != "--dry-run" ] && ! "$python" -c "
import numpy as np
from numba import cuda
@cuda.jit
def one(x):
    x[0] = 1
a = cuda.to_device(np.zeros(1))
one[1, 1](a)
assert a.copy_to_host()[0] == 1" 2>/dev/null; then
    # numba.cuda needs libNVVM to compile; numba-cuda's extra brings it as a wheel matching torch's CUDA major.
    major="$("$python" -c "import torch; print((torch.version.cuda or '12').split('.')[0])")"
    "$python" -m pip install --quiet "numba-cuda[cu${major}]" || echo "numba.cuda cannot compile here: its rows will say so"
fi
out="${OUT:-bench/results}"
mkdir -p "$out"
if [ "${1:-}" != "--dry-run" ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt" || true
fi
exec "$python" -m sadp_data.bench.gpu --json "$out/gpu.json" "$@"
