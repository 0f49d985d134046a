"""The `gradfused` command (also `python -m gradfused`)."""
from __future__ import annotations

import argparse
import os
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
    archs = gradfused.ops.cuda_architectures()
    backends = "CPU+CUDA" if archs else "CPU"
    print(f"native    {_native.BUILD_KIND} build, {backends}")
    if archs:  # nvcc's list, e.g. "800,900": sm_80 and sm_90
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU visible"
        print(f"cuda      compiled for sm_{', sm_'.join(str(int(a) // 10) for a in archs.split(','))} "
              f"(torch CUDA {torch.version.cuda}; {gpu})")
    else:
        print(f"cuda      no CUDA engine: {_native.CUDA_NOT_LOADED}")
    print(f"cpu simd  {gradfused.ops.cpu_isa()} ({torch.get_num_threads()} threads)")
    return 0


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


_SETTINGS = ("dataset", "model", "widths", "activation", "optimizers", "epochs", "seeds", "batch_size", "device",
             "backend", "out", "tune")
_OTHER_PRESETS = ("sequential", "ascent")  # presets with their own runners (not compare's model training)


def _compare(args: argparse.Namespace) -> int:
    from .errors import CommandError
    from .experiments.compare import config_from_json, format_table, resolve, run
    from .experiments.presets import PRESETS

    overrides = {k: getattr(args, k) for k in _SETTINGS}
    if args.preset is not None and args.preset not in (*PRESETS, *_OTHER_PRESETS):
        raise CommandError(f"unknown preset {args.preset!r} (expected one of: {', '.join((*PRESETS, *_OTHER_PRESETS))})")
    if args.config:
        given = [k for k, v in overrides.items() if v is not None and k != "out"] + (["preset"] if args.preset else [])
        if given:  # they would be silently ignored: the recorded configuration is rerun as it was
            raise CommandError(f"--config reruns a recorded configuration and takes no --{given[0].replace('_', '-')} "
                               "(only --out); edit the JSON's config instead")
        config = config_from_json(args.config)
        if args.out:
            config.out = args.out
    else:
        if args.preset == "sequential":
            return _compare_sequential(args, overrides)
        if args.preset == "ascent":
            return _compare_ascent(args, overrides)
        config = resolve(args.preset, overrides)
    report = run(config, quiet=args.quiet, overwrite=args.overwrite)
    print(format_table(report))
    print(f"wrote {config.out}/results.json, results.csv and loss_curves.png")
    return 0


def _compare_sequential(args: argparse.Namespace, overrides: dict) -> int:
    """The sequential preset compares training methods with SGD on a sigmoid MLP; only some options apply."""
    from .errors import CommandError
    from .experiments import sequential

    unused = [k for k in ("model", "activation", "optimizers", "backend", "tune") if overrides[k] is not None]
    if unused:
        raise CommandError(f"--preset sequential does not take --{unused[0].replace('_', '-')} (it compares "
                           "training methods with SGD on a sigmoid MLP)")
    config = sequential.resolve({k: overrides[k] for k in ("dataset", "widths", "epochs", "seeds", "batch_size",
                                                           "device", "out")})
    report = sequential.run(config, quiet=args.quiet, overwrite=args.overwrite)
    print(sequential.format_table(report))
    print(f"wrote {config.out}/results.json, results.csv and loss_curves.png")
    return 0


def _compare_ascent(args: argparse.Namespace, overrides: dict) -> int:
    """The ascent preset runs the gradient-ascent package's ten maximisation problems; it trains no model."""
    from .errors import CommandError
    from .experiments import ascent
    from .experiments.compare import DEFAULT_OUT

    unused = [k for k, v in overrides.items() if v is not None and k != "out"]
    if unused:
        raise CommandError(f"--preset ascent does not take --{unused[0].replace('_', '-')} (it runs fixed "
                           "maximisation problems)")
    out = overrides["out"] or DEFAULT_OUT
    report = ascent.run(out, quiet=args.quiet, overwrite=args.overwrite)
    print(ascent.format_table(report))
    print(f"wrote {out}/results.json and ascent_curves.png")
    return 0


def _add_compare(sub) -> None:
    from .experiments.presets import DEFAULT, PRESETS

    p = sub.add_parser("compare", help="train a model with several optimizers over several seeds and compare",
                       description="Trains the same model from the same initial weights with each optimizer and "
                                   "reports losses, accuracy and step time. Needs no network. Without --preset "
                                   "the defaults below apply; a preset sets its own, and explicit options "
                                   "override both.")
    p.add_argument("--preset", help=f"a research comparison: {', '.join((*PRESETS, *_OTHER_PRESETS))}")
    p.add_argument("--dataset", help=f"mnist1d or digits (default: {DEFAULT['dataset']})")
    p.add_argument("--model", help=f"mlp or cnn (MNIST-1D) (default: {DEFAULT['model']})")
    p.add_argument("--widths", type=_int_list,
                   help=f"hidden widths of the MLP (default: {','.join(map(str, DEFAULT['widths']))})")
    p.add_argument("--activation", help=f"relu, tanh, sigmoid or gelu (default: {DEFAULT['activation']})")
    p.add_argument("--optimizers", nargs="+", metavar="SPEC",
                   help="e.g. adamw:lr=1e-3 persistent_sgd:lr=0.01,decay=0.99 align:adam:lr=8.5e-3,beta=0.99 "
                        "lookahead:adamw:lr=1e-3,k=5 torch.sgd:lr=0.1,momentum=0.9 (tuples with '/': "
                        f"betas=0.9/0.999) (default: {' '.join(DEFAULT['optimizers'])})")
    p.add_argument("--epochs", type=int, help=f"(default: {DEFAULT['epochs']})")
    p.add_argument("--seeds", type=int, help=f"how many seeds, 0, 1, ... (default: {DEFAULT['seeds']})")
    p.add_argument("--batch-size", type=int, help=f"(default: {DEFAULT['batch_size']})")
    p.add_argument("--device", help="cpu or cuda (default: cpu)")
    p.add_argument("--backend", help="native or reference: which implementation trains (default: native)")
    p.add_argument("--out", help="output folder (default: compare-results)")
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    p.add_argument("--tune", type=int, help="optuna trials per optimizer before the run (needs optuna) (default: 0)")
    p.add_argument("--config", help="rerun the configuration recorded in a results.json (takes only --out)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_compare)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradfused", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, which native build is loaded, and the CPU SIMD level").set_defaults(
        run=_info)
    _add_compare(sub)
    from . import bench_cli

    bench_cli.add_parser(sub)
    args = parser.parse_args(argv)
    from .errors import CommandError

    try:
        return args.run(args)
    except CommandError as e:
        print(f"gradfused {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `gradfused info | head -2`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
