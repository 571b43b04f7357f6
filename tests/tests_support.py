"""Small helpers shared by test modules (ports, waiting on processes)."""
import ctypes
import signal
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """preexec_fn for servers started by tests: SIGTERM them if the test run itself is killed, so no
    orphaned server keeps running (and spinning a core) after an interrupted run."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
