"""Hyperparameter search with optuna: grid, random, or Bayesian (TPE), scored on validation macro-F1."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import optuna
import pandas as pd
import yaml
from pydantic import BaseModel, Field, ValidationError

from adapter.errors import TrainingError
from adapter.training.data import LabelledData
from adapter.training.hyperparameters import Hyperparameters
from adapter.training.trainer import FineTuned, fine_tune

SearchMethod = Literal["grid", "random", "bayes"]


class FloatRange(BaseModel):
    low: float
    high: float
    log: bool = False
    grid: list[float] = Field(min_length=1, description="the values tried by --search grid")


class Choice(BaseModel):
    choices: list[int | float | str] = Field(min_length=1)


class SearchSpace(BaseModel):
    """Which hyperparameters to search, and over what. Keys are Hyperparameters field names."""

    params: dict[str, FloatRange | Choice]

    @classmethod
    def default(cls) -> SearchSpace:
        return cls(params={
            "learning_rate": FloatRange(low=2e-5, high=1e-4, log=True, grid=[3e-5, 8e-5]),
            "weight_decay": FloatRange(low=0.0, high=0.1, grid=[0.0, 0.05]),
            "dropout": FloatRange(low=0.05, high=0.3, grid=[0.1]),
        })

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        try:
            raw = yaml.safe_load(Path(path).read_text())
            space = cls(params=raw)
        except FileNotFoundError:
            raise TrainingError(f"search space file not found: {path}") from None
        except (yaml.YAMLError, ValidationError, TypeError) as exc:
            raise TrainingError(f"search space file {path} is invalid: {exc}") from None
        unknown = set(space.params) - set(Hyperparameters.model_fields)
        if unknown:
            raise TrainingError(f"search space names unknown hyperparameters: {', '.join(sorted(unknown))}")
        return space

    def grid(self) -> dict[str, list]:
        return {name: (p.grid if isinstance(p, FloatRange) else p.choices) for name, p in self.params.items()}

    def suggest(self, trial: optuna.Trial, method: SearchMethod) -> dict[str, object]:
        values: dict[str, object] = {}
        for name, p in self.params.items():
            if method == "grid":
                values[name] = trial.suggest_categorical(name, self.grid()[name])
            elif isinstance(p, FloatRange):
                values[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
            else:
                values[name] = trial.suggest_categorical(name, p.choices)
        return values


class SearchResult(BaseModel, arbitrary_types_allowed=True):
    method: str
    trials: int
    best_params: dict[str, object]
    best_value: float
    seconds: float
    table: pd.DataFrame
    best: FineTuned

    def summary(self) -> dict[str, object]:
        return {"method": self.method, "trials": self.trials, "best_params": self.best_params,
                "best_validation_f1": self.best_value, "seconds": round(self.seconds, 1),
                "table": "search/trials.csv"}


def _sampler(method: SearchMethod, space: SearchSpace, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    if method == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if method == "bayes":
        # TPE needs a few random trials to model from; with a small budget, half of it.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(5, trials // 2)))
    raise TrainingError(f"unknown search method {method!r}; use grid, random or bayes")


def run_search(data: LabelledData, base: Hyperparameters, base_model: str, method: SearchMethod,
               trials: int, space: SearchSpace | None = None, show_progress: bool = True) -> SearchResult:
    """Train one model per trial; keep the one with the best validation macro-F1 (never the test set)."""
    space = space or SearchSpace.default()
    if method == "grid":
        size = 1
        for values in space.grid().values():
            size *= len(values)
        trials = min(trials, size)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=_sampler(method, space, base.seed, trials))
    best: dict[str, FineTuned] = {}

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial, method)
        hp = base.model_copy(update=params)
        result = fine_tune(data, hp, base_model, show_progress=show_progress,
                           description=f"trial {trial.number + 1}/{trials}")
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("train_seconds", round(result.train_seconds, 1))
        if "model" not in best or result.best_validation_f1 > best["model"].best_validation_f1:
            best["model"] = result
        return result.best_validation_f1

    started = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    table = study.trials_dataframe(attrs=("number", "value", "params", "user_attrs", "state"))
    return SearchResult(method=method, trials=len(study.trials), best_params=study.best_params,
                        best_value=float(study.best_value), seconds=time.perf_counter() - started,
                        table=table, best=best["model"])
