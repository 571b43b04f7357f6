"""KV-cache store: write the keys/values of committed tokens into their page slots.
The PyTorch path lives here; slot -1 means the row is not stored (still being denoised)."""
import torch


def store_kv_reference(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> None:
    """k/v [N, Hkv, D]; caches [pages, page_size, Hkv, D]; slot_mapping [N] int64."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k[keep].to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v[keep].to(v_cache.dtype)
