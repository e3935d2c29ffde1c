"""Opens a sidecar for writing and holds it (``tests/test_faults.py``: a second writer is refused until this one dies).

Usage: python hold_writer.py SIDECAR. Prints "open" once the writer lock is held, then sleeps 120 s.
"""

import sys
import time

from sadp_data import ScoreStore

store = ScoreStore.open(sys.argv[1], "r+")
print("open", flush=True)
time.sleep(120)
