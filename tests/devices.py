"""The devices the table-driven tests run on: the CPU always, CUDA when a GPU is present. A CUDA
parameter carries the `cuda` marker (`pytest -m cuda` selects the GPU tests) and skips cleanly without
a GPU or without the CUDA engine in this build."""
import pytest
import torch


def cuda_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    import gradfused

    return gradfused._native.available() and bool(gradfused.ops.cuda_architectures())


CUDA_SKIP = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, CUDA_SKIP], id="cuda")
DEVICES = ["cpu", CUDA]
