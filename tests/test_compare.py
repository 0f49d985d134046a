"""`gradfused compare`: an end-to-end run at tiny size, offline deterministic datasets, the parsing of
--optimizers, and bad arguments (a clear one-line error and a non-zero exit, never a traceback)."""
import json

import numpy as np
import pytest
import torch

from gradfused import environment
from gradfused.cli import main
from gradfused.experiments import datasets
from gradfused.errors import CommandError
from gradfused.experiments.optimizers import parse

TINY = ["--epochs", "1", "--seeds", "1", "--quiet", "--batch-size", "256"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GRADFUSED_CACHE", str(tmp_path_factory.getbasetemp() / "gradfused-cache"))
    # never the folder pytest was started in, which may hold a user's compare-results/
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def test_tiny_end_to_end_run_writes_everything(tmp_path, capsys):
    out = tmp_path / "run"
    specs = ["adamw:lr=1e-3", "align:adam:lr=1e-3,beta=0.9", "torch.sgd:lr=0.1,momentum=0.9"]
    assert main(["compare", *TINY, "--out", str(out), "--optimizers", *specs]) == 0
    table = capsys.readouterr().out
    assert "AdamW(lr=0.001)" in table and "best val loss" in table
    report = json.loads((out / "results.json").read_text())
    assert report["config"]["epochs"] == 1 and report["config"]["optimizers"] == specs
    assert report["versions"]["torch"] == torch.__version__
    # the commit as installed: "unknown" from a source archive without .git, which must not fail the suite
    assert report["versions"]["commit"] == environment.commit() != ""
    for key in ("build", "simd", "threads", "cpu"):  # what reading the timings needs
        assert report["versions"][key] not in (None, "", "unknown"), key
    assert [r["spec"] for r in report["results"]] == specs
    for r in report["results"]:
        (run,) = r["runs"]
        (epoch,) = run["epochs"]
        assert set(epoch) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"}
        assert 0 < epoch["val_loss"] < 10 and 0 <= epoch["val_acc"] <= 1 and run["step_ms"] > 0
        assert r["summary"]["step_ms_native"] > 0
    assert report["results"][0]["summary"]["step_ms_reference"] > 0  # gradfused: both backends timed
    assert report["results"][2]["summary"]["step_ms_reference"] is None  # torch.optim has no reference
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(specs)
    assert rows[0].split(",") == ["optimizer", "spec", "seed", "epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                                  "test_loss", "test_acc"]
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sequential_preset_compares_three_methods(tmp_path, capsys):
    out = tmp_path / "seq"
    assert main(["compare", "--preset", "sequential", *TINY, "--batch-size", "64", "--out", str(out)]) == 0
    assert "sequential, batch 64, lr 1" in capsys.readouterr().out
    report = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in report["results"]] == ["autograd", "simultaneous", "sequential", "autograd",
                                                        "simultaneous", "sequential"]
    auto, manual = (r["runs"][0]["epochs"][0]["train_loss"] for r in report["results"][:2])
    assert auto == pytest.approx(manual, rel=1e-4)  # the same math by two codes
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nnopt_preset_runs_the_variant_family(tmp_path, capsys):
    out = tmp_path / "nnopt"
    assert main(["compare", "--preset", "nnopt", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for label in ("NAdam(lr=0.001)", "RMSprop(lr=0.001)", "Adam(lr=0.001, betas=0/0.9)", "grad_noise=0.3/0.55",
                  "lr_dropout=0.5", "Lookahead[k=5, alpha=0.5](SGD", "AdamW(lr=0.001, weight_decay=0.1)"):
        assert label in printed
    assert len(json.loads((out / "results.json").read_text())["results"]) == 21


def test_ascent_preset_rejects_training_options(capsys):
    assert main(["compare", "--preset", "ascent", "--epochs", "3"]) == 2
    assert "--preset ascent does not take --epochs" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--preset", "ascent", "--epochs", "3"], "--preset ascent does not take --epochs"),
    (["--preset", "sequential", "--model", "mlp"], "--preset sequential does not take --model"),
    (["--optimizers", "adamw:lr=1e-3", "adamw:lr=-1"], "optimizer 'adamw:lr=-1'"),
    (["--epochs", "0"], "--epochs must be a whole number >= 1"),
])
def test_argument_errors_come_before_the_output_folder_is_looked_at(tmp_path, monkeypatch, capsys, argv, message):
    """A folder that already holds results (as the quick start's first command leaves) does not hide an
    argument error, which is the more useful message."""
    (tmp_path / "compare-results").mkdir()
    (tmp_path / "compare-results" / "results.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err


def test_rerun_from_results_json_gives_the_same_numbers(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["compare", *TINY, "--out", str(first), "--optimizers", "radam:lr=3e-3", "--dataset", "digits"]) == 0
    assert main(["compare", "--quiet", "--config", str(first / "results.json"), "--out", str(second)]) == 0
    a, b = (json.loads((d / "results.json").read_text()) for d in (first, second))
    assert a["config"] == dict(b["config"], out=a["config"]["out"])
    assert a["results"][0]["runs"][0]["epochs"] == b["results"][0]["runs"][0]["epochs"]


@pytest.mark.parametrize("name, shapes", [("mnist1d", (3200, 40, 1000)), ("digits", (1150, 64, 360))])  # train less validation
def test_datasets_are_generated_offline_deterministically_and_cached(name, shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADFUSED_CACHE", str(tmp_path / "one"))
    first = datasets.load(name)
    assert (tmp_path / "one" / "datasets" / f"{name}.npz").exists()
    cached = datasets.load(name)
    monkeypatch.setenv("GRADFUSED_CACHE", str(tmp_path / "two"))
    regenerated = datasets.load(name)
    assert tuple(first.x_train.shape) == shapes[:2] and len(first.y_test) == shapes[2]
    assert first.num_classes == 10
    for a, b, c in zip((first.x_train, first.y_train, first.x_val, first.x_test, first.y_test),
                       (cached.x_train, cached.y_train, cached.x_val, cached.x_test, cached.y_test),
                       (regenerated.x_train, regenerated.y_train, regenerated.x_val, regenerated.x_test,
                        regenerated.y_test)):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_mnist1d_generation_leaves_numpy_global_state_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADFUSED_CACHE", str(tmp_path))
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    datasets.load("mnist1d")
    assert np.random.rand() == expected


def test_parse_optimizer_specs():
    s = parse("adamw:lr=1e-3,betas=0.9/0.99,amsgrad=true")
    assert (s.name, s.hyper, s.align) == ("adamw", {"lr": 1e-3, "betas": (0.9, 0.99), "amsgrad": True}, None)
    s = parse("align:adam:lr=8.5e-3,beta=0.99")
    assert (s.name, s.hyper, s.align) == ("adam", {"lr": 8.5e-3}, {"beta": 0.99})
    s = parse("persistent_sgd:lr=0.01,decay=0.99")
    assert s.hyper == {"lr": 0.01, "decay": 0.99} and s.is_gradfused
    s = parse("torch.sgd:lr=0.1,momentum=0.9,nesterov=true")
    assert not s.is_gradfused and s.hyper["nesterov"] is True
    assert parse("adema").hyper == {}
    assert parse("adema:t_alpha_beta3=none").hyper == {"t_alpha_beta3": None}
    s = parse("lookahead:align:adam:lr=1e-3,beta=0.9,k=3")
    assert (s.name, s.hyper, s.align, s.lookahead) == ("adam", {"lr": 1e-3}, {"beta": 0.9}, {"k": 3})
    s = parse("adamw:grad_noise=0.01/0.55,lr_dropout=0.5,seed=1")  # the options every gradfused optimizer takes
    assert s.hyper == {"grad_noise": (0.01, 0.55), "lr_dropout": 0.5, "seed": 1}


@pytest.mark.parametrize("spec, message", [
    ("adamx:lr=1", "unknown optimizer 'adamx'"),
    ("adamw:lr", "malformed hyperparameter 'lr'"),
    ("adamw:lr=abc", "malformed hyperparameter value 'abc'"),
    ("adamw:lrr=0.1", "AdamW has no hyperparameter lrr"),
    ("align:", "align needs a base optimizer"),
    ("lookahead:", "lookahead needs a base optimizer"),
    ("torch.adamw:lr_dropout=0.5", "AdamW has no hyperparameter lr_dropout"),
])
def test_parse_rejects_bad_specs(spec, message):
    with pytest.raises(CommandError, match=message):
        parse(spec)


@pytest.mark.parametrize("args, message", [
    (["--optimizers", "adamx"], "unknown optimizer 'adamx'"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--optimizers", "adamw:lr=1e-3,betas"], "malformed hyperparameter 'betas'"),
    (["--optimizers", "adamw:lr=-1"], "Invalid learning rate: -1"),
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--preset", "nope"], "expected one of: grn, gao, nnopt, sequential, ascent"),
    (["--optimizers", "adamx"], "align:<base>, lookahead:<base>"),
    (["--optimizers", "adamw:lr=1e-3,"], "empty hyperparameter (a trailing or doubled comma)"),
    (["--optimizers", "adamw:lr=1e-3,,eps=1e-8"], "empty hyperparameter"),
    (["--optimizers", "adamw:lr=1e-3,lr=1e-2"], "sets 'lr' twice"),
    (["--optimizers", "adamw:lr=1e-3", "adamw:lr=1e-3"], "optimizer 'adamw:lr=1e-3' is given twice"),
    # a bad value in the last spec fails before the first one trains
    (["--optimizers", "adamw:lr=1e-3", "adamw:lr=-1"], "Invalid learning rate: -1"),
    (["--optimizers", "persistent_sgd:decay=1.5"], "Invalid decay value: 1.5"),
    (["--epochs", "0"], "--epochs must be a whole number >= 1"),
    (["--backend", "fast"], "--backend must be native or reference"),
    (["--preset", "sequential", "--optimizers", "adamw"], "--preset sequential does not take --optimizers"),
    (["--preset", "sequential", "--batch-size", "0"], "batch sizes must be >= 1"),
])
def test_bad_arguments_give_one_line_and_exit_2(args, message, tmp_path, capsys):
    assert main(["compare", *TINY, "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # nothing trained, no empty output folder left behind


def test_existing_results_are_kept_and_config_takes_no_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compare", *TINY, "--out", str(out), "--optimizers", "sgd:lr=0.002693883"]) == 0
    assert "SGD(lr=0.002694)" in capsys.readouterr().out  # 4 significant digits in labels
    before = (out / "results.json").read_text()
    assert main(["compare", *TINY, "--out", str(out), "--optimizers", "adamw"]) == 2
    assert "already holds results" in capsys.readouterr().err and (out / "results.json").read_text() == before
    assert main(["compare", "--config", str(out / "results.json"), "--epochs", "5"]) == 2
    assert "--config reruns a recorded configuration and takes no --epochs" in capsys.readouterr().err
    assert main(["compare", "--config", str(out / "results.json"), "--overwrite", "--quiet"]) == 0


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["compare", *TINY, "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert "is not a writable folder" in err and "Traceback" not in err


def test_argparse_errors_exit_2_without_traceback(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", "--epochs", "many"])
    assert e.value.code == 2 and "invalid int value" in capsys.readouterr().err


def test_tune_searches_lr_and_beta_and_records_it(tmp_path):
    out = tmp_path / "tuned"
    specs = ["adamw:lr=1e-3", "align:adam:lr=1e-3,beta=0.9"]
    assert main(["compare", *TINY, "--dataset", "digits", "--tune", "3", "--out", str(out), "--optimizers", *specs]) == 0
    report = json.loads((out / "results.json").read_text())
    assert [t["trials"] for t in report["tuning"]] == [3, 3]
    assert set(report["tuning"][0]["best_params"]) == {"lr"}
    assert set(report["tuning"][1]["best_params"]) == {"lr", "beta"}
    assert report["results"][0]["hyperparameters"]["lr"] == report["tuning"][0]["best_params"]["lr"]
    assert report["results"][1]["alignment"]["beta"] == report["tuning"][1]["best_params"]["beta"]


def test_bench_small_run_writes_json_and_plot(tmp_path, capsys):
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    assert main(["bench", "--small", "--rounds", "2", "--optimizers", "AdamW", "--cases", "c-1M-in-200",
                 "--providers", "gradfused", "torch_fused", "--json", str(json_path), "--plot", str(png_path)]) == 0
    out = capsys.readouterr().out
    assert "AdamW, c-1M-in-200" in out and "gradfused speedup" in out
    report = json.loads(json_path.read_text())
    assert report["complete"] is True
    assert report["meta"]["commit"] == environment.commit() != ""  # as above
    for key in ("build", "simd", "threads", "cpu", "torch"):
        assert report["meta"][key] not in (None, "", "unknown"), key
    assert [r["provider"] for r in report["rows"]] == ["torch_fused", "gradfused"]
    for r in report["rows"]:
        assert r["step_ms"] > 0 and r["gbps"] > 0 and r["yardstick_gbps"] > 0 and r["state_mib"] > 0
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_bad_arguments(capsys, tmp_path):
    assert main(["bench", "--small", "--rounds", "0"]) == 2
    assert "--rounds must be >= 1" in capsys.readouterr().err
    # an unwritable output is refused before anything is measured, not with a traceback at the end
    assert main(["bench", "--small", "--json", str(tmp_path / "missing" / "b.json")]) == 2
    err = capsys.readouterr().err
    assert "--json" in err and "does not exist" in err and "[1/" not in err
    assert main(["bench", "--small", "--plot", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["bench", "--small", "--providers", "numpy"]) == 2
    assert "unknown provider numpy" in capsys.readouterr().err


def test_a_closed_pipe_ends_the_command_without_a_traceback(monkeypatch, tmp_path):
    """`gradfused info | head -2`: the reader leaves early; the command returns 1 and prints nothing more."""
    import sys

    from gradfused import cli

    def write_into_closed_pipe(args):
        raise BrokenPipeError

    with open(tmp_path / "stdout", "w") as sink:
        monkeypatch.setattr(sys, "stdout", sink)
        monkeypatch.setattr(cli, "_info", write_into_closed_pipe)
        assert cli.main(["info"]) == 1


def test_validation_is_split_from_train_and_never_overlaps_test():
    from gradfused.experiments import datasets

    for name in ("digits", "mnist1d"):
        d = datasets.load(name)
        total = len(d.y_train) + len(d.y_val)
        assert len(d.y_val) == int(datasets.VALIDATION_FRACTION * total) > 0
        seen = {tuple(row.tolist()) for row in d.x_test}
        assert not any(tuple(row.tolist()) in seen for row in d.x_val[:200])


def test_best_epoch_is_selected_on_validation_and_test_is_read_there():
    from gradfused.experiments.compare import summarize

    epochs = [dict(epoch=1, train_loss=1.0, val_loss=0.9, test_loss=0.5, test_acc=0.9),
              dict(epoch=2, train_loss=0.5, val_loss=0.7, test_loss=0.8, test_acc=0.6),  # best on validation
              dict(epoch=3, train_loss=0.1, val_loss=0.8, test_loss=0.4, test_acc=0.95)]  # best on test: not chosen
    s = summarize([dict(seed=0, epochs=epochs, step_ms=1.0)])
    assert (s["best_val_loss_mean"], s["best_epoch_mean"]) == (0.7, 2)
    assert (s["test_loss_mean"], s["test_acc_mean"], s["final_train_loss_mean"]) == (0.8, 0.6, 0.1)


def test_config_rerun_checks_the_recorded_out_folder_not_the_default(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["compare", *TINY, "--out", str(out), "--optimizers", "sgd:lr=0.01"]) == 0
    assert main(["compare", *TINY, "--optimizers", "sgd:lr=0.01", "--quiet"]) == 0  # fills ./compare-results
    capsys.readouterr()
    # the recorded folder holds results: refused; ./compare-results holding results is no reason to refuse
    assert main(["compare", "--config", str(out / "results.json")]) == 2
    assert f"--out {str(out)!r} already holds results" in capsys.readouterr().err
    recorded = json.loads((out / "results.json").read_text())
    recorded["config"]["out"] = str(tmp_path / "fresh")  # a configuration whose own folder is empty
    (tmp_path / "fresh.json").write_text(json.dumps(recorded))
    assert main(["compare", "--config", str(tmp_path / "fresh.json"), "--quiet"]) == 0
    assert (tmp_path / "fresh" / "results.json").exists()
