"""Features that need a newer torch than the oldest supported one (README "Supported torch versions"):
their tests skip below that version, with the reason. Each version is one that CI tests (.ci/run)."""
import re

import pytest
import torch

TORCH = tuple(int(x) for x in re.findall(r"\d+", torch.__version__)[:2])

# torch.compile over step(), and torch.library.opcheck of the ops: Dynamo before 2.11 cannot trace the
# optimizer's param_groups (id() or `is` of a dict breaks the graph), and before 2.11 functionalization
# refuses the ops' optional in-place tensor lists (seen on 2.4.1, 2.5.1 and 2.6.0; 2.11.0 passes).
COMPILE = (2, 11)
needs_compile = pytest.mark.skipif(
    TORCH < COMPILE, reason=f"torch.compile and opcheck of gradfused's ops are supported from torch "
                            f"{COMPILE[0]}.{COMPILE[1]}; this is {torch.__version__}")

# torch's optim_db has the error input "betas[0] as a Tensor is not supported for capturable=False and
# foreach=True" from torch 2.6 (absent in 2.5.1).
TENSOR_BETAS_ERROR_INPUT = (2, 6)
