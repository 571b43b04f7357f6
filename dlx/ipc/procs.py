"""Process identity and liveness checks used to detect a dead peer.
Owns the (pid, start time) pair that tells a live process apart from a dead one or a reused pid."""
from __future__ import annotations

import os

# Marks a side that detached on purpose; pid 0 means "never attached yet".
DEPARTED_PID = -1


def _read_proc_stat(pid: int) -> tuple[str, int] | None:
    """Return (state letter, start time in clock ticks) from /proc, or None when /proc is unavailable.

    Raises ProcessLookupError when /proc exists but the process does not."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            raw = stat_file.read()
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            raise ProcessLookupError(pid) from None
        return None
    except OSError:
        return None
    # The command name sits in parentheses and may itself contain spaces or ')', so split after the last ')'.
    fields = raw[raw.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[19])


def process_start_time(pid: int) -> int:
    """Start time of `pid` in clock ticks since boot; 0 when it cannot be read (the check then trusts the pid)."""
    try:
        stat = _read_proc_stat(pid)
    except ProcessLookupError:
        return 0
    return stat[1] if stat else 0


_own_identity: tuple[int, int] | None = None


def own_identity() -> tuple[int, int]:
    """(pid, start time) of this process, re-read after a fork because the pid changes."""
    global _own_identity
    pid = os.getpid()
    if _own_identity is None or _own_identity[0] != pid:
        _own_identity = (pid, process_start_time(pid))
    return _own_identity


def process_alive(pid: int, start_time: int = 0) -> bool:
    """True if `pid` runs and, when `start_time` is known, is the same process that recorded it.

    A zombie (killed but not yet reaped by its parent) counts as dead: it will never touch the ring again."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists but belongs to another user
    try:
        stat = _read_proc_stat(pid)
    except ProcessLookupError:
        return False
    if stat is None:
        return True
    state, started = stat
    if state in ("Z", "X"):
        return False
    return not start_time or started == start_time
