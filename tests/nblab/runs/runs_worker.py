"""A training job stand-in, run as a subprocess by the run store tests.

usage: runs_worker.py HOME RUN_ID BATCHES BATCH_SIZE MODE
  MODE close: wait for a line on stdin (a start gun), write, close the run.
  MODE hang:  write, print "flushed", then sleep until killed.
Each batch is BATCH_SIZE metric rows (one step, BATCH_SIZE keys) and one flush.
"""

import sys
import time

from nblab.runs import RunStore


def main(home: str, run_id: str, batches: str, batch_size: str, mode: str) -> None:
    writer = RunStore(home).writer(run_id, flush_every=None)
    if mode == "close":
        print("ready", flush=True)
        sys.stdin.readline()
    for step in range(int(batches)):
        writer.log_metrics(step, {f"k{i}": step + i / 1000 for i in range(int(batch_size))})
        writer.flush()
    if mode == "close":
        writer.close()
    else:
        print("flushed", flush=True)
        time.sleep(3600)


if __name__ == "__main__":
    main(*sys.argv[1:])
