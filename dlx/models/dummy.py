"""Dummy weights: seeded random parameters made on the model's own device (no checkpoint read), routers balanced
the way trained LLaDA2 routers are (auxiliary-loss-free expert bias), and the distinct-experts statistic showing it."""
import contextlib
import zlib

import torch

from dlx.kernels.attention import AttentionMetadata
from dlx.kernels.moe_router import route_reference
from dlx.models.layers import copy_full
from dlx.models.moe import Router
from dlx.models.parallel import all_reduce, tp_rank, tp_size

# 128 sequences of one diffusion block each (4096 tokens): a decoding step's forward sees blocks like these, and
# at 256 experts × top-8 every expert gets 128 calibration picks, so the bias fits the routing, not the noise.
CALIBRATION_SEQUENCES = 128
CALIBRATION_BLOCK = 32
BALANCE_STEPS = 100
MEASURE_SEED = 1_000_003   # far from the weight seeds: measured tokens are never the calibration ones
# A random model gives the rows of a decoding block (mostly mask tokens) nearly the same hidden state: no trained
# attention tells them apart, so they would all choose the same experts (17-27 distinct of 256 per layer in an
# H100 engine step, where a trained LLaDA2 block touches about 163). Each router of a dummy model therefore adds a
# fixed random offset per batch row to its logits, four times their own spread, so a block's rows choose about as
# diversely as a trained model's do; the expert bias then evens out the load. Measured on the mini shape (CPU, 3
# layers): a block of masks touches 77-88 of 256 experts at std 1, 149-156 at 4 (163 is uniform), and fewer again
# at 6, where sigmoid scores saturate to equal values and group-limited routing keeps picking the same groups.
JITTER_ROWS = 4096
JITTER_STD = 4.0
# Projections that write into the residual stream (attention output, dense/shared/expert down projections); all are
# row-parallel, so under tensor parallelism each rank holds a slice of their input dimension.
RESIDUAL_OUTPUTS = ("attention.dense.weight", "down_proj.weight", "mlp.w2")
BALANCE_METHOD = ("dummy weights: N(0, 1/fan_in) matrices (residual-stream outputs also / sqrt(2 x layers)), "
                  "N(0, 1) embeddings, norms 1; router logits get a fixed N(0, 16) offset per batch row, so the "
                  "mask rows of a block choose experts as diversely as a trained model's tokens do; each MoE "
                  "layer's expert_bias solved, layer by layer, on "
                  f"{CALIBRATION_SEQUENCES} random sequences of {CALIBRATION_BLOCK} tokens so that every expert "
                  "is chosen equally often (auxiliary-loss-free balancing, as LLaDA2 is trained)")


def parameter_generator(name: str, param: torch.Tensor, seed: int) -> torch.Generator:
    """One generator per parameter, on its device, so its values do not depend on which other parameters exist.
    Replicated parameters (embeddings, norms, router, head) are seeded by name alone, so every tensor-parallel rank
    makes the same values, as it must; a sharded one also by rank, so the ranks' slices differ as a checkpoint's
    would (identical slices would add up coherently in the all-reduce)."""
    replicated = getattr(param, "weight_loader", copy_full) is copy_full
    key = name if replicated else f"{name}@rank{tp_rank()}"
    return torch.Generator(device=param.device).manual_seed(seed << 32 | zlib.crc32(key.encode()))


def init_std(name: str, fan_in: int, num_layers: int) -> float:
    """Every matrix reads an RMS-normalised input (or a SwiGLU or attention output of RMS at most 1), so
    N(0, 1/fan_in) keeps each output at RMS about 1 and no bf16 value grows. Embeddings start the residual stream
    at RMS 1; the projections that add to it are scaled by 1/sqrt(2 x layers) as in GPT-2 and Megatron, so the
    stream stays below RMS sqrt(2). That scaling matters for routing: attention gives all tokens of a sequence
    nearly the same average of their values, and at full scale that shared part grows layer after layer until
    tokens of one block choose the same experts (a 20-layer model of hidden 512 and LLaDA2's router, measured:
    125 distinct experts instead of 163 by layer 19, against 158-164 at every layer with it)."""
    if name == "word_embeddings.weight":
        return 1.0
    std = fan_in ** -0.5
    return std / (2 * num_layers) ** 0.5 if name.endswith(RESIDUAL_OUTPUTS) else std


@torch.no_grad()
def fill_dummy_weights(model: torch.nn.Module, seed: int = 0, balance: bool = True) -> None:
    """Fill every parameter in place on its own device (no host copies): norm weights 1, biases 0, matrices and
    embeddings Gaussian; then, with `balance`, solve every router's expert bias on a calibration batch."""
    num_layers = model.config.num_hidden_layers
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif name.endswith((".bias", ".expert_bias")):
            param.zero_()
        else:
            fan_in = param.shape[-1] * (tp_size() if name.endswith(RESIDUAL_OUTPUTS) else 1)
            param.normal_(0.0, init_std(name, fan_in, num_layers), generator=parameter_generator(name, param, seed))
    for name, module in model.named_modules():
        if isinstance(module, Router):
            gen = torch.Generator(device=module.weight.device).manual_seed(seed << 32 | zlib.crc32(name.encode()))
            module.row_jitter = JITTER_STD * torch.randn(JITTER_ROWS, module.num_experts, generator=gen,
                                                         device=module.weight.device)
    if balance:
        balance_routers(model, seed)


def random_batch(vocab_size: int, sequences: int, length: int, seed: int, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """Random token ids in `sequences` separate sequences of `length` (each one bidirectional block), nothing
    cached: (ids, positions, metadata) for one ragged forward."""
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = torch.randint(vocab_size, (sequences * length,), generator=gen, device=device)
    positions = torch.arange(length, device=device).repeat(sequences)
    meta = AttentionMetadata(torch.arange(sequences + 1, device=device) * length,
                             torch.zeros(sequences, dtype=torch.long, device=device), None, None,
                             length, [length] * sequences, [0] * sequences)
    return ids, positions, meta


def routers_of(model: torch.nn.Module) -> list[Router]:
    return [m for m in model.modules() if isinstance(m, Router)]


@torch.no_grad()
def balance_routers(model: torch.nn.Module, seed: int = 0) -> None:
    """One calibration forward in which each router, when reached, first solves its expert bias on the hidden
    states it receives; so each layer is balanced on what the already balanced earlier layers produce.
    Routers without an expert bias (moe_router_enable_expert_bias false) are left as they are: the init alone
    routes nearly uniformly (distinct_experts_per_layer tells how nearly). Every tensor-parallel rank must call
    this together (the forward all-reduces)."""
    routers = [r for r in routers_of(model) if r.expert_bias is not None]
    if not routers:
        return
    device = model.word_embeddings.weight.device
    ids, positions, meta = random_batch(model.config.vocab_size, CALIBRATION_SEQUENCES, CALIBRATION_BLOCK,
                                        seed, device)

    def balance(router: Router, args: tuple) -> None:
        logits = router.logits(args[0])
        bias = solve_expert_bias(logits, router)
        if tp_size() > 1:   # every rank solved the same problem; averaging makes the copies equal bit for bit
            bias = all_reduce(bias) / tp_size()
        router.expert_bias.copy_(bias)

    handles = [r.register_forward_pre_hook(balance) for r in routers]
    try:
        model(ids, positions, meta)
    finally:
        for handle in handles:
            handle.remove()


def expert_load(logits: torch.Tensor, bias: torch.Tensor, router: Router) -> torch.Tensor:
    """How many of the tokens choose each expert, by the router's own (group-limited) routing function."""
    ids, _ = route_reference(logits, bias, router.top_k, router.n_group, router.topk_group, 1.0,
                             router.score_function)
    return torch.bincount(ids.reshape(-1), minlength=router.num_experts).float()


def solve_expert_bias(logits: torch.Tensor, router: Router, steps: int = BALANCE_STEPS) -> torch.Tensor:
    """Auxiliary-loss-free balancing (DeepSeek-V3, LLaDA2): raise the bias of under-chosen experts and lower that
    of over-chosen ones, in proportion to the relative error, with a step shrinking from a tenth of the score
    spread to a thousandth of it. The bias only shifts the choice, never the weights, as in the router."""
    scores = torch.sigmoid(logits) if router.score_function == "sigmoid" else torch.softmax(logits, -1)
    spread = scores.std()
    target = len(logits) * router.top_k / router.num_experts
    bias = torch.zeros(router.num_experts, dtype=torch.float32, device=logits.device)
    for step in range(steps):
        gamma = 0.1 * spread * 0.01 ** (step / steps)
        load = expert_load(logits, bias, router)
        bias += gamma * ((target - load) / target).clamp(-1.0, 1.0)
    return bias


@contextlib.contextmanager
def chosen_experts(model: torch.nn.Module):
    """Records, while open, the expert ids [tokens, top_k] each router chose in the latest forward: a dict from
    the router's index (MoE layers in order) to its choice. The hooks read nothing from the device themselves."""
    chosen: dict[int, torch.Tensor] = {}
    handles = [r.register_forward_hook(lambda module, args, out, i=i: chosen.__setitem__(i, out[0]))
               for i, r in enumerate(routers_of(model))]
    try:
        yield chosen
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def distinct_experts_per_layer(model: torch.nn.Module, tokens: int = 32, seed: int = MEASURE_SEED,
                               sequences: int = 1) -> list[float]:
    """Distinct experts that `tokens` fresh random tokens (one sequence, one bidirectional block, as in a decoding
    step) touch in each MoE layer, top-k each, averaged over `sequences` independent draws. Works whichever kernels
    the model is set to; under tensor parallelism every rank must call it together."""
    device = model.word_embeddings.weight.device
    totals = [0.0] * len(routers_of(model))
    with chosen_experts(model) as chosen:
        for draw in range(sequences):
            model(*random_batch(model.config.vocab_size, 1, tokens, seed + draw, device))
            for i in range(len(totals)):
                totals[i] += chosen[i].unique().numel()
    return [total / sequences for total in totals]


def uniform_distinct_experts(num_experts: int, top_k: int, tokens: int) -> float:
    """Expected distinct experts when each token picks top_k different experts uniformly and independently:
    163.3 for 256 experts, top-8, 32 tokens."""
    return num_experts * (1 - (1 - top_k / num_experts) ** tokens)
