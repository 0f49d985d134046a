"""Gradient ascent: GradientAscent reproduces the figures the gradient-ascent package reports for its
deterministic benchmarks, and maximize=True ascends with every optimizer."""
import pytest

import gradfused as gf
from gradfused.experiments.ascent import PROBLEMS, format_table, run, run_problem

BY_NUMBER = {p.number: p for p in PROBLEMS}


@pytest.mark.parametrize("fused", [True, False], ids=["native", "reference"])
def test_gradient_ascent_reproduces_the_packages_figures(fused):
    def make(params):
        return gf.GradientAscent(params, fused=fused)

    assert run_problem(BY_NUMBER[1], make)["reported"] == pytest.approx(10.0, abs=1e-5)
    for number in (2, 7):  # the package reports 1.4e-23
        assert abs(run_problem(BY_NUMBER[number], make)["reported"]) < 1e-20
    assert run_problem(BY_NUMBER[6], make)["reported"] == pytest.approx(0.3128, abs=1e-4)
    assert run_problem(BY_NUMBER[9], make)["reported"] == pytest.approx(1.0, abs=1e-6)


MAXIMIZERS = {
    "PersistentSGD": lambda p: gf.PersistentSGD(p, lr=1e-2, maximize=True),
    "Adam": lambda p: gf.Adam(p, lr=1e-2, maximize=True),
    "AdamW": lambda p: gf.AdamW(p, lr=1e-2, maximize=True),
    "RAdam": lambda p: gf.RAdam(p, lr=1e-2, maximize=True),
    "AdEMA": lambda p: gf.AdEMA(p, lr=1e-2, maximize=True),
    "NAdam": lambda p: gf.NAdam(p, lr=1e-2, maximize=True),
    "RMSprop": lambda p: gf.RMSprop(p, lr=1e-2, maximize=True),
    "GradientAscent": lambda p: gf.GradientAscent(p),
    "Align(AdamW)": lambda p: gf.GradientAlignment(gf.AdamW(p, lr=1e-2, maximize=True)),
    "Lookahead(NAdam)": lambda p: gf.Lookahead(gf.NAdam(p, lr=1e-2, maximize=True)),
}


@pytest.mark.parametrize("make", MAXIMIZERS.values(), ids=MAXIMIZERS.keys())
def test_maximize_ascends_with_every_optimizer(make):
    """-(x0² + x1²) from (1, 1): the objective rises from -2 towards its maximum 0."""
    result = run_problem(BY_NUMBER[7], make, steps=300)
    assert result["curve"][0] == -2.0
    assert -0.5 < result["objective"] <= 0.0
    assert result["objective"] > max(result["curve"][:5])


def test_preset_writes_results_table_and_plot(tmp_path):
    report = run(str(tmp_path), quiet=True, steps=20)
    table = format_table(report)
    assert "package README" in table and "GradientAscent(momentum_ema=False)" in table
    assert len(table.splitlines()) == 2 + len(PROBLEMS)
    assert (tmp_path / "results.json").exists()
    assert (tmp_path / "ascent_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
