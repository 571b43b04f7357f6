"""CPU pinning for --engine-cpus: moves every thread of the calling process onto a set of CPUs.
A leaf module (os only), so the launcher and frontends pin themselves without importing the engine."""
import os


def pin_process(cpus: set[int]) -> None:
    """Every thread of this process onto `cpus`: threads that imports or the supervisor started are already
    running, and threads started later inherit the affinity of the one that starts them."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:   # the thread ended meanwhile
            continue
