"""`python -m nblab.merge RUN_ID`: make a queued merge run (created by
nblab.merge.run.create_merge_run; the server and the widget start it detached)."""

from __future__ import annotations

import sys

from nblab.merge.run import run_merge, spec_of
from nblab.runs import RunStore


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m nblab.merge RUN_ID", file=sys.stderr)
        return 2
    store = RunStore()
    run_merge(spec_of(argv[0], store), store=store, run_id=argv[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
