"""`--tune N`: an optuna search of lr (and beta, under alignment) per optimizer, minimising the best
validation loss of one seed, as the Gradient Alignment experiment did (30 trials there)."""
from __future__ import annotations

from typing import Any

from ..errors import CommandError


def tune_all(config, specs, data, *, quiet: bool) -> tuple[list, list[dict[str, Any]]]:
    try:
        import optuna
    except ImportError:
        raise CommandError("--tune needs optuna, an optional extra: pip install optuna") from None
    from .compare import _initial_weights, train_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    init = _initial_weights(config, data, seed=0)
    tuned, records = [], []
    for spec in specs:
        lr0 = float(spec.hyper.get("lr", 1e-3))

        def objective(trial, spec=spec, lr0=lr0):
            hyper = dict(spec.hyper, lr=trial.suggest_float("lr", lr0 / 10, lr0 * 10, log=True))
            align = None if spec.align is None else dict(spec.align, beta=trial.suggest_float("beta", 0.5, 0.999))
            run = train_run(config, spec.with_hyper(hyper, align), data, 0, init)
            return min(e["val_loss"] for e in run["epochs"])

        study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=0))
        study.optimize(objective, n_trials=config.tune, show_progress_bar=not quiet)
        best = study.best_params
        hyper = dict(spec.hyper, lr=best["lr"])
        align = None if spec.align is None else dict(spec.align, beta=best["beta"])
        tuned.append(spec.with_hyper(hyper, align))
        records.append(dict(spec=spec.text, trials=config.tune, best_value=study.best_value, best_params=best))
    return tuned, records
