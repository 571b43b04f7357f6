"""What launch planning needs to know about the device: how many SMs a grid has to fill.
Triton-free, so kernel modules that import Triton lazily can use it on CPU-only machines."""
import functools

import torch

FALLBACK_SM_COUNT = 132    # H100; only used where no CUDA device answers (interpreter runs)


@functools.cache
def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return FALLBACK_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count
