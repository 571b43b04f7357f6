"""Triton test set-up shared by the kernel test modules: the CPU interpreter switch (conftest sets
TRITON_INTERPRET=1 before anything imports Triton) and the device the kernels run on."""
import pytest
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"


def import_triton():
    """Triton, running compiled on a GPU and interpreted on the CPU; skips the module without it."""
    triton = pytest.importorskip("triton", reason="Triton is not installed; the Triton kernels cannot be tested")
    if not ON_GPU:
        if type(triton.language.zeros).__name__ != "InterpretedFunction":
            pytest.skip("Triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)
    return triton
