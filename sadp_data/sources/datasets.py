"""Datasets the demo and benchmarks use: Fashion-MNIST from its IDX files, no download.

The repository ships Fashion-MNIST (MIT, © Zalando SE) under ``data/fashion-mnist``; any folder with
the four standard ``*-idx*-ubyte[.gz]`` files works.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

_IDX_TYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def default_data_dir() -> Path:
    """``data/fashion-mnist`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "data" / "fashion-mnist"


def load_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array of its declared shape.

    Raises ``ValueError`` naming the file when the magic number, type code or length is wrong.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: not a readable gzip file ({error}); is it truncated or not compressed?") from error
    if len(data) < 4 or data[0:2] != b"\0\0" or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    dtype = np.dtype(_IDX_TYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: expected {expected} bytes for shape {shape}, found {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{folder}: missing {stem}[.gz] (an MNIST-style IDX folder is expected)")


class FashionMNIST(Dataset):
    """Fashion-MNIST (or MNIST) from an IDX folder: items are ``(image float32[1, 28, 28] in [0, 1], label)``.

    ``limit`` keeps the first ``limit`` examples (the files are already in random order).
    """

    def __init__(self, root: str | Path | None = None, split: str = "train", limit: int | None = None) -> None:
        if split not in _FILES:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        folder = Path(root) if root is not None else default_data_dir()
        images_file, labels_file = (_find(folder, stem) for stem in _FILES[split])
        images, labels = load_idx(images_file), load_idx(labels_file)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels in the {split} split")
        if limit is not None:
            if limit <= 0:
                raise ValueError(f"limit must be positive, got {limit}")
            images, labels = images[:limit], labels[:limit]
        self.images = torch.from_numpy(images.copy())
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].unsqueeze(0).float().div_(255.0), int(self.labels[index])
