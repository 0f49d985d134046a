"""8-bit optimizer states (docs/low-bit-states.md): the options every gradfused optimizer takes.

- ``state_bits=8``: each state tensor of a parameter with at least ``quantize_min_numel`` elements
  (default 4096, counted over the whole parameter, so a DTensor shard does not change the decision) is
  kept as uint8 codes under its own key (laid out like the parameter) and one float32 absmax per 256
  elements under ``<key>_absmax``. Smaller parameters keep full-precision states (in ``state_dtype``).
- ``state_bits=32`` (the default): every state at full precision.

The kernels decode, update and encode the states in the same pass (NOTE: [8-bit states in the kernel] in
csrc/cpu/kernels_impl.h, NOTE: [8-bit states on CUDA] in csrc/cuda/update_kernel.cuh); the reference
(gradfused/reference/pipeline.py) does the same with gradfused/quantization.py.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import quantization as Q
from . import _validation as V
from ._dtensor import is_dtensor, like_param, local

DEFAULTS = dict(state_bits=32, quantize_min_numel=4096)
ABSMAX = "_absmax"  # the suffix of a state's absmax key
# NOTE: [8-bit states in a state_dict]
# A state_dict saves a state's codes under `<key>_codes_v2` (CODES), not under the state's own key:
# torch.optim would load uint8 codes under `exp_avg` and cast them into moments of 0..255, then train on
# them. Without its keys, torch's Adam, AdamW, NAdam, RAdam and RMSprop fail at their first step instead
# (KeyError: 'exp_avg'), before writing anything; torch's SGD reads state.get("momentum_buffer") and starts
# its momentum again from the gradient. full_precision_state_dict (below) is the checkpoint torch.optim
# loads. The suffix names the code's format (NOTE: [the 8-bit code]): format 1's codes, under `<key>_codes`
# or (in still older checkpoints) under `<key>`, are decoded with that format's map when they load.
CODES = f"_codes_v{Q.FORMAT_VERSION}"
LEGACY_CODES = "_codes"
# the states that cannot be negative take the unsigned map; every other state the signed one
UNSIGNED_STATES = frozenset({"exp_avg_sq", "max_exp_avg_sq", "square_avg"})


def check(owner: str, group: dict) -> None:
    bits = group["state_bits"]
    if isinstance(bits, bool) or bits not in (8, 32):
        raise V.invalid(owner, "state_bits", bits, "8 or 32")
    least = group["quantize_min_numel"]
    if isinstance(least, bool) or not isinstance(least, int) or least < 0:
        raise V.invalid(owner, "quantize_min_numel", least, "a whole number >= 0")


def quantized(group: dict, p: Tensor) -> bool:
    """Whether `p`'s states are 8-bit in `group`."""
    return group["state_bits"] == 8 and p.numel() >= group["quantize_min_numel"] and not p.is_complex()


# NOTE: [8-bit states of sharded parameters]
# A DTensor parameter (FSDP2's fully_shard) keeps its codes as a DTensor laid out like it, and one plain
# float32 absmax per block of its *local* shard: each rank quantizes its shard, in blocks of 256 of the
# shard's memory order, and nothing is communicated. Whether a parameter is 8-bit is decided on its
# global size (quantized(), above), so the decision does not change with the world size. Where every
# shard is a whole number of blocks, the blocks are those of the unsharded tensor and the step is the
# unsharded optimizer's, bit for bit (tested); elsewhere a block ends at the shard's end, the same scheme
# over other blocks. A state_dict holds these states decoded to float32 DTensors (saved_format): per-rank
# scales would only load on the same shards, whereas DCP reshards full-precision DTensors to any world
# size, and the load encodes them again on each rank (encode).


def new_state(p: Tensor, key: str) -> dict[str, Tensor]:
    """Zero states of `p` as codes and absmax (code 0 stands for 0)."""
    codes = torch.zeros_like(local(p), dtype=torch.uint8, memory_format=torch.preserve_format)
    absmax = torch.zeros(Q.num_blocks(codes.numel()), dtype=torch.float32, device=codes.device)
    return {key: like_param(codes, p), key + ABSMAX: absmax}


def op_kwargs(keys: list[str], states: list[dict]) -> dict:
    """The op's 8-bit arguments for a bucket whose states `keys` (in the op's order) are 8-bit."""
    return dict(state_absmax=[st[key + ABSMAX] for key in keys for st in states],
                state_signed=[int(key not in UNSIGNED_STATES) for key in keys])


def in_parameter_order(codes: Tensor, p: Tensor) -> bool:
    """Whether codes (or any tensor shaped like p) lie in memory in the order the kernels walk p: p's own
    order where p is dense, else logical order (the kernels work on a contiguous copy of a non-dense
    parameter). A block is 256 codes in that order, so codes laid out otherwise would apply each scale to
    another block's elements."""
    if codes.stride() == p.stride() and Q._is_dense(p):
        return True
    if not Q._is_dense(p):
        return codes.is_contiguous()
    return codes.shape == p.shape and all(a == b for a, b, n in zip(codes.stride(), p.stride(), p.shape) if n > 1)


def put_in_parameter_order(state: dict, key: str, p: Tensor) -> None:
    """A state, codes or full precision (a checkpoint's), as codes in p's order (in_parameter_order): codes
    laid out otherwise are decoded and encoded again, which rounds once more (within a code)."""
    if is_codes(state[key]) and not in_parameter_order(state[key], p):
        decode(state, key, torch.float32)
    if not is_codes(state[key]):
        full = state[key]
        if not in_parameter_order(full, p):
            state[key] = torch.empty_like(p, dtype=full.dtype).copy_(full) if Q._is_dense(p) else full.contiguous()
        encode(state, key)


def encode(state: dict, key: str) -> None:
    """A full-precision state (a checkpoint's) as codes and absmax, in place of it (a DTensor's shard by
    shard: NOTE: [8-bit states of sharded parameters])."""
    codes, absmax = Q.quantize_blockwise(local(state[key]), key not in UNSIGNED_STATES)
    state[key], state[key + ABSMAX] = like_param(codes, state[key]), absmax


def decode(state: dict, key: str, dtype: torch.dtype) -> None:
    """8-bit codes (a checkpoint's) as a full-precision state in `dtype`, in place of them."""
    codes = state[key]
    values = Q.dequantize_blockwise(local(codes), state.pop(key + ABSMAX), key not in UNSIGNED_STATES, dtype)
    state[key] = like_param(values, codes)


def is_codes(value) -> bool:
    return isinstance(value, Tensor) and value.dtype == torch.uint8


def saved_format(state: dict) -> dict:
    """A parameter's state as a state_dict saves it: codes under `<key>_codes_v2` (NOTE: [8-bit states in a
    state_dict]); a sharded parameter's decoded to float32 (NOTE: [8-bit states of sharded parameters])."""
    sharded = [key for key, value in state.items() if is_codes(value) and is_dtensor(value)]
    if sharded:
        state = dict(state)
        for key in sharded:
            decode(state, key, torch.float32)
    return {key + CODES if is_codes(value) else key: value for key, value in state.items()}


def loaded_format(state: dict) -> dict:
    """The inverse of saved_format. Codes of format 1 (under `<key>_codes`, or under `<key>` itself in older
    checkpoints) are decoded to float32 with that format's map, which the optimizer then encodes again as
    its states require; codes whose absmax is missing or malformed are left for the checks to refuse."""
    out, legacy = {}, []
    for key, value in state.items():
        if is_codes(value) and key.endswith(CODES):
            out[key[:-len(CODES)]] = value
        elif is_codes(value):
            name = key.removesuffix(LEGACY_CODES)
            out[name] = value
            legacy.append(name)
        else:
            out[key] = value
    for key in legacy:
        absmax = out.get(key + ABSMAX)
        if (isinstance(absmax, Tensor) and absmax.dtype == torch.float32 and absmax.dim() == 1
                and absmax.numel() == Q.num_blocks(out[key].numel())):
            out[key] = Q.legacy_dequantize_blockwise(out[key], out.pop(key + ABSMAX), key not in UNSIGNED_STATES)
    return out


def full_precision_state_dict(optimizer) -> dict:
    """`optimizer.state_dict()` with every 8-bit state decoded to float32 and its absmax dropped: a
    checkpoint that torch.optim (and gradfused with state_bits=32) loads."""
    sd = optimizer.state_dict()
    state = {}
    for index, st in sd["state"].items():
        if isinstance(st, dict):
            st = loaded_format(st)
            for key in [k for k, v in st.items() if is_codes(v)]:
                decode(st, key, torch.float32)
        state[index] = st
    return {**sd, "state": state}
