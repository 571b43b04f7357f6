"""Doorbells: named FIFOs that let a blocked ring side sleep in the kernel until its peer rings.
Owns creating/opening the FIFOs and the readiness wait (select.poll; one kept io watcher under gevent)."""
from __future__ import annotations

import os
import select
import sys


def wait_readable(fds: list[int], timeout: float) -> list[int]:
    """Block up to `timeout` seconds until some of `fds` are readable; return those.

    Uses select.poll (no FD_SETSIZE limit for busy frontends). The function is looked up on the
    `select` module at call time, so after gevent's monkey-patching it yields to other greenlets."""
    if not fds:
        return []
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    wake_mask = select.POLLIN | select.POLLERR | select.POLLHUP | select.POLLNVAL
    events = poller.poll(max(0.0, timeout) * 1000.0)
    return [fd for fd, mask in events if mask & wake_mask]


def cooperative() -> bool:
    """True in a gevent-patched process (the frontends): waits must yield to the other greenlets."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("select")


class Doorbell:
    """One FIFO shared by the ringing side and the waiting side.

    Both sides open it O_RDWR|O_NONBLOCK: neither open nor write ever blocks, and the FIFO stays valid
    whoever comes and goes. A full FIFO (64 KiB of unread rings) already means "wake up", so a write
    that would block is simply dropped."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._watcher = None   # gevent io watcher, made on the first cooperative wait

    @classmethod
    def create(cls, path: str) -> Doorbell:
        """Make the FIFO (replacing an orphan of a crashed run with the same name) and open it."""
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            os.unlink(path)
            os.mkfifo(path, 0o600)
        return cls.open(path)

    @classmethod
    def open(cls, path: str) -> Doorbell:
        return cls(path, os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))

    def fileno(self) -> int:
        return self._fd

    def ring(self) -> None:
        """Wake the waiter; never blocks."""
        try:
            os.write(self._fd, b"\x01")
        except BlockingIOError:
            pass  # FIFO full: the waiter has plenty of pending wake-ups already

    def drain(self) -> None:
        """Swallow pending rings; callers re-check the shared state afterwards, so nothing is lost."""
        try:
            while os.read(self._fd, 4096):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or `timeout` passes; True if rung. Pending rings are drained."""
        if self._wait_cooperative(timeout) if cooperative() else wait_readable([self._fd], timeout):
            self.drain()
            return True
        return False

    def _wait_cooperative(self, timeout: float) -> bool:
        """The gevent wait on one kept io watcher: half the cost of gevent's select.poll emulation, which
        builds a poller and a watcher per call (a busy frontend waits once per engine message). Callers
        hold the ring's lock, so no two greenlets wait on one doorbell."""
        import gevent
        from gevent.socket import wait as wait_on_watcher
        if self._watcher is None:
            self._watcher = gevent.get_hub().loop.io(self._fd, 1)
        try:
            wait_on_watcher(self._watcher, timeout=max(0.0, timeout))
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
