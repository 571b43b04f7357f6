"""Merge step of split-KV (flash-decoding) paged attention: the combine kernel and its launch.
Each split leaves a normalised partial output with its running max and sum; this folds them into one row."""
import torch
import triton
import triton.language as tl

from dlx.kernels.attention_plan import combine_launch

# A finite "minus infinity" for running maxima: a row that has seen no key yet never computes inf - inf.
NEG_BIG = tl.constexpr(-1.0e30)


@triton.jit(do_not_specialize=["num_splits", "stride_pout_split", "stride_pstat_split"])
def _combine_splits_kernel(part_out_ptr, part_max_ptr, part_sum_ptr, out_ptr, positions_ptr, num_splits,
                           stride_pout_split, stride_pout_row, stride_pout_head, stride_pstat_split,
                           stride_pstat_row, stride_on, stride_oh, SPLITS_PAD: tl.constexpr,
                           HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, PDL: tl.constexpr):
    """One program per (query row, head): merge the splits' (max, sum, normalised output). Every split's
    partial and the row's position are loaded at once: one memory round trip for the merge, not one a split."""
    row, head = tl.program_id(0).to(tl.int64), tl.program_id(1)
    if PDL:
        tl.extra.cuda.gdc_wait()   # launched early: the split kernel's partials are complete past this point
    position = tl.load(positions_ptr + row)   # loaded beside the partials: no round trip of its own
    splits = tl.arange(0, SPLITS_PAD)
    split_ok = splits < num_splits
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = (offs_d < HEAD_DIM) | (HEAD_DIM == HEAD_DIM_PAD)
    stat_offsets = splits.to(tl.int64) * stride_pstat_split + row * stride_pstat_row + head
    part_max = tl.load(part_max_ptr + stat_offsets, mask=split_ok, other=NEG_BIG)
    part_sum = tl.load(part_sum_ptr + stat_offsets, mask=split_ok, other=0.0)
    out_offsets = splits.to(tl.int64) * stride_pout_split + row * stride_pout_row + head * stride_pout_head
    part_out = tl.load(part_out_ptr + out_offsets[:, None] + offs_d[None, :],
                       mask=split_ok[:, None] & d_ok[None, :], other=0.0)
    # Each split weighs in with its share of the row's softmax mass; empty splits (max NEG_BIG, sum 0) with 0.
    weight = tl.exp2(part_max - tl.max(part_max, 0)) * part_sum
    total = tl.sum(weight, 0)
    out = tl.sum(part_out.to(tl.float32) * weight[:, None], 0) / tl.where(total > 0, total, 1.0)
    # Padding rows are left alone. A branch rather than a mask term: Triton 3.9's interpreter tags a
    # scalar comparison with its operands' int type and broadcasts it as int, which no store accepts.
    if position >= 0:
        tl.store(out_ptr + row * stride_on + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty), mask=d_ok)


def combine_splits(part_out: torch.Tensor, part_max: torch.Tensor, part_sum: torch.Tensor, out: torch.Tensor,
                   positions: torch.Tensor, head_dim_pad: int, pdl: bool) -> None:
    """Write into `out` [rows, heads, dim] the merge of part_out [splits, rows, heads, dim] weighted by
    part_max/part_sum [splits, rows, heads]; `pdl` launches it as a programmatic dependent of the split kernel."""
    num_splits, total_rows, num_heads, head_dim = part_out.shape
    _combine_splits_kernel[(total_rows, num_heads)](
        part_out, part_max, part_sum, out, positions, num_splits, *part_out.stride()[:3],
        *part_max.stride()[:2], out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, PDL=pdl, launch_pdl=pdl,
        **combine_launch(num_splits))
