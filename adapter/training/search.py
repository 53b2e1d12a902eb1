"""Hyperparameter search with optuna: grid, random, or Bayesian (TPE), scored on validation macro-F1."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path

import optuna
import pandas as pd
import yaml
from pydantic import BaseModel, Field, ValidationError

from adapter.errors import TrainingError
from adapter.training.base_model import BaseModelSource
from adapter.training.data import LabelledData
from adapter.training.hyperparameters import Hyperparameters
from adapter.training.strategies import StrategyName
from adapter.training.trainer import FineTuned, fine_tune


class SearchMethod(StrEnum):
    GRID = "grid"
    RANDOM = "random"
    BAYES = "bayes"  # optuna's TPE


class FloatRange(BaseModel):
    low: float
    high: float
    log: bool = False
    grid: list[float] = Field(min_length=1, description="the values tried by --search grid")


class Choice(BaseModel):
    choices: list[int | float | str] = Field(min_length=1)


class SearchSpace(BaseModel):
    """Which hyperparameters to search, and over what. Keys are Hyperparameters field names, and
    ``strategy.<knob>`` for the strategy's own (``strategy.r`` for LoRA's rank)."""

    params: dict[str, FloatRange | Choice]

    @classmethod
    def default(cls, base: Hyperparameters) -> SearchSpace:
        """Learning rate around the strategy's default (LoRA wants 20× full fine-tuning's), weight decay,
        dropout."""
        lr = type(base.strategy).default_learning_rate
        return cls(params={
            "learning_rate": FloatRange(low=lr * 0.4, high=lr * 2, log=True, grid=[lr * 0.6, lr * 1.6]),
            "weight_decay": FloatRange(low=0.0, high=0.1, grid=[0.0, 0.05]),
            "dropout": FloatRange(low=0.05, high=0.3, grid=[0.1]),
        })

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        try:
            raw = yaml.safe_load(Path(path).read_text())
            return cls(params=raw)
        except FileNotFoundError:
            raise TrainingError(f"search space file not found: {path}") from None
        except (yaml.YAMLError, ValidationError, TypeError) as exc:
            raise TrainingError(f"search space file {path} is invalid: {exc}") from None

    def check_names(self, strategy: StrategyName) -> None:
        unknown = set(self.params) - Hyperparameters.tunable_names(strategy)
        if unknown:
            raise TrainingError(f"the search space names what strategy {strategy.value} has no knob for: "
                                f"{', '.join(sorted(unknown))}")

    def grid(self) -> dict[str, list]:
        return {name: (p.grid if isinstance(p, FloatRange) else p.choices) for name, p in self.params.items()}

    def suggest(self, trial: optuna.Trial, method: SearchMethod) -> dict[str, object]:
        values: dict[str, object] = {}
        for name, p in self.params.items():
            if method is SearchMethod.GRID:
                values[name] = trial.suggest_categorical(name, self.grid()[name])
            elif isinstance(p, FloatRange):
                values[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
            else:
                values[name] = trial.suggest_categorical(name, p.choices)
        return values


class SearchConfig(BaseModel):
    """A hyperparameter search: how, how many trials, over what (None: ``SearchSpace.default``)."""

    method: SearchMethod
    trials: int = Field(4, ge=1, description="trial budget; a grid smaller than it is tried whole")
    space: SearchSpace | None = None


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
    if method is SearchMethod.GRID:
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if method is SearchMethod.RANDOM:
        return optuna.samplers.RandomSampler(seed=seed)
    # TPE needs a few random trials to model from; with a small budget, half of it.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(5, trials // 2)))


def run_search(data: LabelledData, base: Hyperparameters, base_model: BaseModelSource, search: SearchConfig,
               show_progress: bool = True) -> SearchResult:
    """Train one model per trial; keep the one with the best validation macro-F1 (never the test set)."""
    space = search.space or SearchSpace.default(base)
    space.check_names(base.strategy.name)
    method, trials = search.method, search.trials
    if method is SearchMethod.GRID:
        size = 1
        for values in space.grid().values():
            size *= len(values)
        trials = min(trials, size)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=_sampler(method, space, base.seed, trials))
    best: dict[str, FineTuned] = {}

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial, method)
        hp = base.updated(params)
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
    return SearchResult(method=method.value, trials=len(study.trials), best_params=study.best_params,
                        best_value=float(study.best_value), seconds=time.perf_counter() - started,
                        table=table, best=best["model"])
