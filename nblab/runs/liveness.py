"""Is the writer of a `running` run still alive? Decided by readers, from the runs row."""

import os
import socket
from pathlib import Path

HOST = socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` on this host exists and has not exited."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    # A child that died but that its parent has not waited for yet is a zombie:
    # kill(pid, 0) still succeeds, yet it will never write again.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no procfs (macOS): trust kill()
    return state not in ("Z", "X")


def death_of(
    pid: int | None, host: str | None, heartbeat: float, now: float, stale_after: float
) -> str | None:
    """Why the writer (`pid` on `host`, last heard from at `heartbeat`) is dead, or None.

    On this host a vanished pid is proof at once. Elsewhere, or if the pid lives on
    (it may have been reused), only a heartbeat older than `stale_after` seconds is.
    """
    age = now - heartbeat
    if pid is not None and host == HOST and not pid_alive(pid):
        return (
            f"process {pid} on host {host} exited without closing the run "
            f"(last heartbeat {age:.1f} s ago)"
        )
    if age > stale_after:
        return (
            f"no heartbeat from process {pid} on host {host} for {age:.1f} s "
            f"(stale_after={stale_after:g} s); presumed dead"
        )
    return None
