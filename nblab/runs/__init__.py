"""The run store: the only place that touches nblab's database.

Training jobs write events through a `RunWriter`; notebooks, the Jupyter server and
reports read DataFrames from a `RunStore`. Layout under `$NBLAB_HOME` (default
`~/.nblab`): `nblab.db` (SQLite, WAL) and `runs/<run_id>/` per run.
"""

from nblab.runs.schema import SCHEMA_VERSION, STATUSES, TERMINAL_STATUSES
from nblab.runs.store import RunStore
from nblab.runs.writer import RunWriter

__all__ = ["SCHEMA_VERSION", "STATUSES", "TERMINAL_STATUSES", "RunStore", "RunWriter"]
