"""Runs many steps of one benchmark combination, for a sampling profiler to watch:

    perf record -e cpu-clock -o step.data -- python benchmarks/profile_step.py AdamW b-10M-in-1000 gradfused
    perf report -i step.data --no-children --sort sym        # where the time goes
    perf annotate -i step.data -s <kernel symbol>             # which instructions

(`cpu-clock`, a software event, works where hardware counters are not exposed, as on the development
machine.) The cases and providers are those of gradfused/benchmarking.py; the setup is timed apart
from the steps, so a profile can be read against the printed ms per step."""
from __future__ import annotations

import argparse
import time

from gradfused import benchmarking as B


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("optimizer", choices=list(B.PROVIDERS))
    p.add_argument("case", choices=list(B.CASES))
    p.add_argument("provider")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--small", action="store_true")
    args = p.parse_args()
    shapes, dtype = B.case_shapes(args.case, args.small)
    opt = B.make_optimizer(args.optimizer, args.case, args.provider, B.make_params(shapes, dtype))
    opt.step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        opt.step()
    ms = (time.perf_counter() - t0) / args.steps * 1e3
    print(f"{args.optimizer} / {args.case} / {args.provider}: {ms:.3f} ms per step over {args.steps} steps")


if __name__ == "__main__":
    main()
