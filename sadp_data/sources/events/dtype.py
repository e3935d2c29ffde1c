"""``EVENT_DTYPE``: the structured layout every event reader returns (the one tonic uses)."""

from __future__ import annotations

import numpy as np

#: Fields ``x``, ``y`` (pixel), ``t`` (microseconds) and ``p`` (polarity, 0 or 1), in time order.
EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
