"""Tracing a gloo rank's memory with ``tracemalloc``: reading it after collectives, and leaving.

gloo hands a collective's tensors back on its own worker threads. For the numpy-backed tensors
``TorchComm`` lends it, dropping them needs the GIL, so they stay allocated after the collective
returned until this thread lets go of the GIL: an exchange's 5 MB of buffers were still traced after
the plan in about 1 run in 4 of ``test_sharded_store``'s four-rank test. ``settle`` gives those threads
the GIL before a reading.

And on CPython 3.11 ``tracemalloc.stop()`` races with such a thread entering tracemalloc's hooks
(python/cpython#128679; the fix reached 3.12 and 3.13 only): a rank crashed with SIGSEGV in that
thread (a Python thread state, no Python frame) at the main thread's next GIL release after the stop,
in about 1 run in 5. So a rank starts tracing once and never stops: it leaves through ``finish``,
which skips the interpreter's finalisation (where tracing would be stopped too).
"""

import os
import sys
import time
from typing import NoReturn

import torch.distributed as dist


def settle() -> None:
    """Sleep 0.1 s without the GIL, so gloo's threads drop what the last collectives lent them."""
    time.sleep(0.1)


def finish() -> NoReturn:
    """Destroy the process group, flush the output and exit 0 without finalising the interpreter."""
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
