import sys
sys.path.insert(0, "bench")
import torch
from kernels import attention_batch, copy_bandwidth, time_ms, kernel_ms
from dlx.kernels import attention_plan, attention_triton
import probe_old_attention as old
rate = copy_bandwidth()
print(torch.cuda.get_device_name(), f"copy {rate/1e12:.2f} TB/s")
print("| requests | context | splits | old events us | new events us | old kernel us | new kernel us | new % copy (events) | max diff |")
for r, c in [(1, 4096), (1, 8192), (8, 1024), (8, 4096), (8, 8192), (64, 4096), (64, 8192)]:
    args, nbytes = attention_batch(r, c)
    shape, _, splits = attention_plan.launch_plan(args[0], 4, args[6], cached=True)
    if splits > 1:
        shape = attention_plan.split_tile_shape(shape, 4, 128)
    fo = lambda: old.paged_attention_triton(*args, num_splits=splits, tile=shape)
    fn = lambda: attention_triton.paged_attention_triton(*args, num_splits=splits, tile=shape)
    diff = (fo().float() - fn().float()).abs().max().item()
    eo, en, ko, kn = [], [], [], []
    for _ in range(3):
        eo.append(time_ms(fo, iters=20)); en.append(time_ms(fn, iters=20))
        ko.append(kernel_ms(fo)); kn.append(kernel_ms(fn))
    med = lambda xs: sorted(xs)[1] * 1e3
    print(f"| {r} | {c} | {splits} | {med(eo):.1f} | {med(en):.1f} | {med(ko):.1f} | {med(kn):.1f} "
          f"| {100 * nbytes / (med(en) * 1e-6) / rate:.0f}% | {diff:.1e} |")
