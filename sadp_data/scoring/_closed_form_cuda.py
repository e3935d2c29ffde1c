"""The numba.cuda kernel behind ``_closed_form`` (imported only when a kernel runs)."""

import math

from numba import cuda


@cuda.jit
def cross_entropy_kernel(logits, targets, rate_sq, grad_bound, rate):
    """One thread per row: ``‖softmax(o) − onehot(y)‖`` and its product with ``sqrt(1 + ‖r̄‖²)``."""
    row = cuda.grid(1)
    if row >= logits.shape[0]:
        return
    classes = logits.shape[1]
    peak = logits[row, 0]
    for c in range(1, classes):
        peak = max(peak, logits[row, c])
    total = 0.0
    for c in range(classes):
        total += math.exp(logits[row, c] - peak)
    square = 0.0
    target = targets[row]
    for c in range(classes):
        p = math.exp(logits[row, c] - peak) / total
        if c == target:
            p -= 1.0
        square += p * p
    norm = math.sqrt(square)
    grad_bound[row] = norm
    rate[row] = norm * math.sqrt(1.0 + rate_sq[row])
