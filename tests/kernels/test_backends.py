"""Every backend's interface, and the torch and numba.cuda backends (the latter on the CUDA simulator in CI)
against the reference."""

import inspect
import typing

import numpy as np
import pytest
import torch
from scipy import stats

from sadp_data.kernels import KernelBackend, get_backend, plan_epoch, reference, sample_size
from sadp_data.kernels.arrays import to_host
from sadp_data.kernels.interface import ArrayKind

BACKENDS = ["numpy", "numba", "cuda", "torch"]


def _plan(backend: str, *args, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    order, weights = plan_epoch(*args, backend=backend, **kwargs)
    if hasattr(order, "copy_to_host"):
        return order.copy_to_host(), weights.copy_to_host()
    if isinstance(order, torch.Tensor):
        return order.cpu().numpy(), weights.cpu().numpy()
    return order, weights


def _scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.gamma(0.5, size=n).astype(np.float32)
    scores[rng.random(n) < 0.05] = 0.0
    return scores, (rng.random(n) < 0.9).astype(np.uint32)


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 10, 300, 5000])
def test_cuda_backend_is_bit_identical(n: int) -> None:
    scores, seen = _scores(n, n)
    for keep in (0.01, 0.3, 0.7, 1.0):
        for smoothing in (0.0, 0.1):
            expected = plan_epoch(scores, keep, 3, 2, seen=seen, smoothing=smoothing, backend="numpy")
            got = _plan("cuda", scores, keep, 3, 2, seen=seen, smoothing=smoothing)
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 10, 1000, 150001, 1 << 20 | 77])
def test_torch_backend_selects_and_weights_identically(n: int) -> None:
    scores, seen = _scores(n, n)
    for keep in (0.01, 0.7, 1.0):
        expected = plan_epoch(scores, keep, 3, 2, seen=seen, backend="numpy")
        got = _plan("torch", torch.from_numpy(scores), keep, 3, 2, seen=seen)
        a, b = np.argsort(expected[0]), np.argsort(got[0])
        np.testing.assert_array_equal(got[0][b], expected[0][a])
        np.testing.assert_array_equal(got[1][b], expected[1][a])


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "epochs"), [("torch", 2000), ("cuda", 300)])
def test_backend_inclusion_frequencies_chi_square(backend: str, epochs: int) -> None:
    """Draw counts are Binomial(E, π_i): chi-square at α = 0.001 (fewer epochs on the slow simulator)."""
    scores, seen = _scores(40, 3)
    keep, smoothing = 0.3, 0.1
    k = sample_size(40, keep)
    weights = reference.smooth_scores(scores, seen, smoothing)
    pi = reference.inclusion_probabilities(weights, k)
    counts = np.zeros(40)
    for epoch in range(epochs):
        order, _ = _plan(backend, scores, keep, 11, epoch, seen=seen, smoothing=smoothing)
        assert order.shape == (k,) and np.unique(order).shape == (k,)
        counts[order] += 1
    free = pi < 1
    expected = epochs * pi[free]
    statistic = np.sum((counts[free] - expected) ** 2 / (expected * (1 - pi[free])))
    assert stats.chi2.sf(statistic, df=int(free.sum())) > 1e-3
    assert np.all(counts[~free] == epochs)


def test_auto_backend() -> None:
    assert get_backend("auto", np.ones(3)).name == "numba"
    assert get_backend("torch").name == "torch"
    with pytest.raises(ValueError, match="unknown kernel backend"):
        get_backend("opencl")


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_implements_the_interface(name: str) -> None:
    """The Protocol's members with its exact parameter names, and the results it declares."""
    backend = get_backend(name)
    assert isinstance(backend, KernelBackend)
    assert backend.name == name and backend.arrays in typing.get_args(ArrayKind) and isinstance(backend.exact, bool)
    for entry in ("plan", "shuffle_permutation"):
        declared = list(inspect.signature(getattr(KernelBackend, entry)).parameters)[1:]  # without self
        assert list(inspect.signature(getattr(backend, entry)).parameters) == declared, entry
    kind = {"numpy": np.ndarray, "torch": torch.Tensor}.get(backend.arrays)
    keys = reference.epoch_keys(3, 2)
    scores, seen = _scores(300, 1)
    for size in (90, 300):
        expected = reference.plan(scores, seen, size, 0.1, False, keys)
        order, weights = backend.plan(scores, seen, size, 0.1, False, keys)
        permutation = backend.shuffle_permutation(300, keys.shuffle)
        for result in (order, weights, permutation):
            assert isinstance(result, kind) if kind else hasattr(result, "copy_to_host")
        order, weights, permutation = to_host(order), to_host(weights), to_host(permutation)
        assert order.dtype == np.int64 and weights.dtype == np.float32 and permutation.dtype == np.int64
        if backend.exact:
            np.testing.assert_array_equal(order, expected[0])
            np.testing.assert_array_equal(weights, expected[1])
            np.testing.assert_array_equal(permutation, reference.shuffle_permutation(300, keys.shuffle))
        else:
            a, b = np.argsort(expected[0]), np.argsort(order)
            np.testing.assert_array_equal(order[b], expected[0][a])
            np.testing.assert_array_equal(weights[b], expected[1][a])
            np.testing.assert_array_equal(np.sort(permutation), np.arange(300))
        if backend.arrays == "numpy":  # host backends take tensors too, and copy them over
            from_tensors = backend.plan(torch.from_numpy(scores), torch.from_numpy(seen), size, 0.1, False, keys)
            np.testing.assert_array_equal(from_tensors[0], expected[0])
            np.testing.assert_array_equal(from_tensors[1], expected[1])
