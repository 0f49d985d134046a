"""DTensor parameters (FSDP2's `fully_shard`, tensor parallelism): the elementwise ops run on each rank's
local shard, and GradientAlignment's per-tensor sums are added up across the shards."""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed
    DTensor = None


def is_dtensor(t: Tensor) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    return t.to_local() if is_dtensor(t) else t


def like_param(local_tensor: Tensor, like: Tensor) -> Tensor:
    """`local_tensor` as a DTensor laid out like `like` (its shard on this rank) where `like` is one; else
    itself. For per-element companions of a parameter (8-bit codes, decoded states)."""
    if not is_dtensor(like):
        return local_tensor
    return DTensor.from_local(local_tensor, like.device_mesh, like.placements, run_check=False, shape=like.shape,
                              stride=like.stride())


def local_shards(owner: str, params: list[Tensor], *lists: list[Tensor]) -> list[list[Tensor]]:
    """The local tensors of `params` and of each list beside it (grads, states; an empty list stays empty),
    which must be laid out like their parameter (the same mesh and placements) for an elementwise op to see
    matching elements."""
    out = [[p.to_local() for p in params]]
    for tensors in lists:
        local = []
        for p, t in zip(params, tensors):
            if not is_dtensor(t) or t.placements != p.placements or t.device_mesh != p.device_mesh:
                raise RuntimeError(f"{owner}: a DTensor parameter (placements {p.placements}) has a gradient or "
                                   f"state laid out differently ({getattr(t, 'placements', 'a plain tensor')})")
            local.append(t.to_local())
        out.append(local)
    return out


def sum_over_shards(rows: Tensor, params: list[Tensor]) -> None:
    """Row i of `rows` holds per-shard sums of params[i]; for each sharded DTensor, adds them up over the
    mesh dimensions it is sharded on (in place), so the result equals that of the whole tensor."""
    import torch.distributed as dist

    by_layout: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        if is_dtensor(p):
            dims = tuple(d for d, placement in enumerate(p.placements) if placement.is_shard())
            if dims:
                by_layout[(id(p.device_mesh), dims)].append(i)
    for (_, dims), index in by_layout.items():
        mesh = params[index[0]].device_mesh
        picked = torch.tensor(index, device=rows.device)
        part = rows.index_select(0, picked)
        for d in dims:
            dist.all_reduce(part, group=mesh.get_group(d))
        rows.index_copy_(0, picked, part)
