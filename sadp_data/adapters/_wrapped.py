"""What the Lightning and Accelerate adapters' loaders share: a view of one ``sadp_data.wrap`` loader."""

from __future__ import annotations

from sadp_data.loader import SADPLoader
from sadp_data.sampler import SADPSampler


class WrappedLoader:
    """Holds the ``SADPLoader`` that ``sadp_data.wrap`` returned and exposes its sampler and batch settings."""

    def __init__(self, loader: SADPLoader) -> None:
        if not isinstance(loader, SADPLoader):
            raise TypeError(f"loader must be the SADPLoader sadp_data.wrap returns, got {type(loader).__name__}")
        self.loader = loader

    @property
    def sampler(self) -> SADPSampler:
        return self.loader.sampler

    @property
    def batch_size(self) -> int:
        return int(self.loader.loader.batch_size)

    @property
    def drop_last(self) -> bool:
        return bool(self.loader.loader.drop_last)
