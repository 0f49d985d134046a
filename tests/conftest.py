import pytest
import torch

import gradfused._native

# `import gradfused` loads nothing (gradfused/_native.py); tests that call torch.ops.gradfused directly
# need the ops registered first.
gradfused._native.load()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
