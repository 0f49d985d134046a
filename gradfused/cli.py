"""The `gradfused` command (also `python -m gradfused`)."""
from __future__ import annotations

import argparse
import platform
import sys


def _info(args: argparse.Namespace) -> int:
    import torch

    import gradfused
    from gradfused import _native

    _native.load()
    print(f"gradfused {gradfused.__version__}")
    print(f"torch     {torch.__version__}")
    print(f"python    {platform.python_version()} ({sys.executable})")
    if _native.BUILD_KIND is None:
        print(f"native    not available: {_native.LOAD_ERROR}")
        return 1
    backends = "CPU+CUDA" if torch.ops.gradfused.cuda_built() else "CPU"
    print(f"native    {_native.BUILD_KIND} build, {backends}")
    print(f"cpu simd  {torch.ops.gradfused.cpu_isa()} ({torch.get_num_threads()} threads)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradfused", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, which native build is loaded, and the CPU SIMD level").set_defaults(
        run=_info)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
