"""The definitions the speed benchmarks share (gradfused/benchmarking.py): cases and the memory probe."""
import math

import torch

import gradfused as gf
from gradfused import benchmarking as B


def test_gpt2_small_case_has_gpt2_small_parameter_count():
    shapes, dtype = B.case_shapes("d-gpt2-small", small=False)
    assert dtype == torch.float32
    assert len(shapes) == 148
    assert sum(math.prod(s) for s in shapes) == 124_439_808  # GPT-2 small with the tied output embedding


def test_small_cases_are_smaller():
    for case in B.CASES:
        big, _ = B.case_shapes(case, small=False)
        small, _ = B.case_shapes(case, small=True)
        assert 0 < sum(map(math.prod, small)) * 50 < sum(map(math.prod, big))


def _adamw_peak(numel: int, **kwargs) -> int:
    params = B.make_params(B._split(numel, 10)(False), torch.float32)
    make = (lambda p: torch.optim.AdamW(p, foreach=True)) if kwargs.get("torch_foreach") else gf.AdamW
    opt = make(params)
    opt.step()  # state exists before the measured step
    return B.step_peak_bytes(opt.step, torch.device("cpu"))


def test_step_peak_memory_of_the_fused_step_is_flat_and_the_probe_sees_temporaries():
    small, large = _adamw_peak(10_000), _adamw_peak(200_000)
    assert small == large  # nothing proportional to the parameters is allocated
    assert large < 4096
    # the same probe sees torch's foreach AdamW allocate temporaries that grow with the parameters
    foreach_small, foreach_large = _adamw_peak(10_000, torch_foreach=True), _adamw_peak(200_000, torch_foreach=True)
    assert foreach_large >= 4 * 200_000 and foreach_large > 10 * foreach_small


def test_resnet50_and_decoder_layouts_have_their_parameter_counts():
    shapes = B.resnet50_shapes()
    assert len(shapes) == 161 and sum(math.prod(s) for s in shapes) == 25_557_032  # torchvision's resnet50
    shapes = B.decoder_1b_shapes()
    assert len(shapes) == 197 and sum(math.prod(s) for s in shapes) == 944_148_480


def _benchmark_module(name):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_benchmark_model_has_the_gpt2_layout_and_runs(tmp_path):
    """benchmarks/train_bench.py's model is GPT-2 small's parameter layout (nn.Linear keeps (out, in), the
    Hugging Face layout (in, out): the element counts per tensor agree), and its small run completes."""
    train_bench = _benchmark_module("train_bench")
    ours = [p.numel() for p in train_bench.GPT().parameters()]
    assert sorted(ours) == sorted(math.prod(s) for s in B.gpt2_shapes())
    result = train_bench.main(["--small", "--device", "cpu", "--steps", "1", "--rounds", "1", "--out", str(tmp_path)])
    for name in train_bench.OPTIMIZERS:
        r = result["results"][name]
        assert r["step_ms"] > r["optimizer_ms"] > 0
    assert (tmp_path / "train_bench.txt").read_text().startswith("GPT-2-small-shaped training step")
