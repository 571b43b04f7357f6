"""Triton test set-up shared by the kernel test modules: the CPU interpreter switch (conftest sets
TRITON_INTERPRET=1 before anything imports Triton) and a compatibility patch for Triton 3.6's interpreter."""
import pytest
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"


def _interpreter_compatibility() -> None:
    """Triton 3.6's interpreter converts a runtime loop bound with int() on a one-element array, which
    numpy >= 2.4 rejects (triton-lang/triton issue 9171); make it read the element instead."""
    from triton.runtime import interpreter
    if getattr(interpreter, "_dlx_scalar_index", False) or not hasattr(interpreter, "_patch_lang_tensor"):
        return
    patch_tensor = interpreter._patch_lang_tensor

    def patch_with_scalar_index(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))
    interpreter._patch_lang_tensor = patch_with_scalar_index
    interpreter._dlx_scalar_index = True


def import_triton():
    """Triton, running compiled on a GPU and interpreted on the CPU; skips the module without it."""
    triton = pytest.importorskip("triton", reason="Triton is not installed; the Triton kernels cannot be tested")
    if not ON_GPU:
        if type(triton.language.zeros).__name__ != "InterpretedFunction":
            pytest.skip("Triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)
        _interpreter_compatibility()
    return triton
