"""Named shared-memory segments and side files (FIFOs, lock files) under dlx's naming rule.
Owns naming (`dlx_<creator pid>_...`), opening segments without the resource tracker, and stale cleanup."""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

from .procs import process_alive

NAME_ROOT = "dlx_"
# Linux backs POSIX shared memory with files in /dev/shm; FIFOs and lock files live beside them so a
# single directory scan finds everything a crashed run left behind.
SHM_DIR = "/dev/shm"
_CREATOR_PID = re.compile(r"^dlx_(\d+)_")
_TRACKER_SWAP_LOCK = threading.Lock()


def run_prefix(tag: str) -> str:
    """Name prefix for segments created by this process: `dlx_<pid>_<tag>`."""
    if not re.fullmatch(r"[A-Za-z0-9]+", tag):
        raise ValueError(f"tag must be alphanumeric, got {tag!r}")
    return f"{NAME_ROOT}{os.getpid()}_{tag}"


def creator_pid(name: str) -> int | None:
    """The creating pid embedded in a dlx name, or None if the name does not follow the rule."""
    match = _CREATOR_PID.match(name)
    return int(match.group(1)) if match else None


def require_own_name(name: str) -> None:
    """Reject names that cleanup_stale could not attribute to this (creating) process."""
    if creator_pid(name) != os.getpid() or "/" in name:
        raise ValueError(f"segment name {name!r} must start with dlx_{os.getpid()}_ (see run_prefix)")


def side_path(name: str) -> str:
    """Path of a side file (FIFO, lock file) named after a segment."""
    return os.path.join(SHM_DIR, name)


@contextlib.contextmanager
def _tracker_silenced() -> Iterator[None]:
    """Keep multiprocessing's resource tracker out of dlx segments.

    Python < 3.13 registers every SharedMemory it opens, attached or created, and the tracker unlinks
    them (with a "leaked shared_memory" warning) when the processes sharing it exit; all processes of a
    launch share one tracker, whose name set cannot count several openers. dlx unlinks its own segments
    (ChannelSet.unlink_all, cleanup_stale), so registration is suppressed entirely. No I/O that could
    yield to another greenlet happens while the functions are swapped."""
    with _TRACKER_SWAP_LOCK:
        saved = resource_tracker.register, resource_tracker.unregister
        resource_tracker.register = resource_tracker.unregister = lambda name, rtype: None
        try:
            yield
        finally:
            resource_tracker.register, resource_tracker.unregister = saved


def open_segment(name: str, create: bool, size: int = 0) -> SharedMemory:
    """Create (exclusively) or attach to a segment that no resource tracker will unlink behind dlx's back."""
    if sys.version_info >= (3, 13):
        return SharedMemory(name=name, create=create, size=size, track=False)
    with _tracker_silenced():
        return SharedMemory(name=name, create=create, size=size)


def unlink_segment(shm: SharedMemory) -> None:
    """Remove a segment's name; mappings that are still open stay valid until closed."""
    with contextlib.suppress(FileNotFoundError):
        if sys.version_info >= (3, 13):
            shm.unlink()
        else:
            with _tracker_silenced():
                shm.unlink()


def remove_file(path: str) -> None:
    """Unlink a side file, ignoring one that is already gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def cleanup_stale(prefix_root: str = NAME_ROOT) -> list[str]:
    """Remove segments, FIFOs and lock files under `prefix_root` whose creating process is dead.

    Returns the removed entry names. Entries of live creators, and names that carry no creator pid,
    are left alone."""
    if not prefix_root.startswith(NAME_ROOT):
        raise ValueError(f"prefix_root must start with {NAME_ROOT!r}")
    try:
        entries = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return []
    removed: list[str] = []
    verdicts: dict[int, bool] = {}
    for entry in entries:
        pid = creator_pid(entry)
        if not entry.startswith(prefix_root) or pid is None:
            continue
        if pid not in verdicts:
            verdicts[pid] = process_alive(pid)
        if verdicts[pid]:
            continue
        try:
            os.unlink(os.path.join(SHM_DIR, entry))
        except FileNotFoundError:
            continue  # another cleaner got there first
        removed.append(entry)
    return removed
