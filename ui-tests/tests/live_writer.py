"""A run that trains on its own clock, for the widgets galata test: creates run `live` in
sweep SWEEP of the store at HOME, writes its first rows, prints its run id, then logs one
loss row every INTERVAL seconds (flushed at once) up to STEPS and closes as succeeded.

    python live_writer.py HOME SWEEP STEPS INTERVAL
"""

import sys
import time
from pathlib import Path

from nblab.runs import RunStore

home, sweep, steps, interval = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
store = RunStore(home)
run_id = store.create_run("live", 'name = "live"\n', sweep, steps=steps)
writer = store.writer(run_id, flush_every=None)
for step in range(1, 6):
    writer.log_metrics(step, {"loss": 4.0 * 0.97**step + 0.5})
writer.flush()
print(run_id, flush=True)
for step in range(6, steps + 1):
    time.sleep(interval)
    writer.log_metrics(step, {"loss": 4.0 * 0.97**step + 0.5})
    writer.flush()
writer.close("succeeded")
