"""What launch planning needs to know about the device: how many SMs a grid has to fill, and whether a kernel
may start while the one before it ends. Triton-free, so lazily imported kernel modules can use it on CPU."""
import functools

import torch

FALLBACK_SM_COUNT = 132    # H100; only used where no CUDA device answers (interpreter runs)


@functools.cache
def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return FALLBACK_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.cache
def overlaps_launches(device: torch.device) -> bool:
    """Programmatic dependent launch (sm_90 and later): a dependent grid is scheduled while its predecessor
    drains and waits in-kernel for the predecessor's memory, instead of after it, launch latency included."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9
