import os

# Run numba.cuda kernels on the CPU simulator unless the caller chose otherwise (set before numba loads).
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
