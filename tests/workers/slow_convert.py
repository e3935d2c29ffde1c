"""A conversion that stalls half way (``tests/test_faults.py``: a conversion killed mid-way leaves OUT whole).

Usage: python slow_convert.py OUT. Prints "writing" at example 50, then sleeps 120 s inside the conversion.
"""

import sys
import time

import numpy as np

from sadp_data.shards.writer import write_shards
from sadp_data.sources import Source


class Slow:
    def __len__(self):
        return 10_000

    def __getitem__(self, i):
        if i == 50:
            print("writing", flush=True)
            time.sleep(120)
        return {"x.npy": np.zeros(3, np.float32), "y.cls": 0}


write_shards(Source("slow", Slow()), sys.argv[1], shard_size=10, progress=False, overwrite=True)
