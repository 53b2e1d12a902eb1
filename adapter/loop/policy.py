"""The adaptation policy: when to retrain, how, which gates a candidate must pass, what happens after.

A YAML file (``adapter.policy_file``), validated whole at start-up; every key has a default, so an empty file
(or none) is the default policy. Gates merge over their defaults key by key, as the monitor's signals do::

    triggers: {min_fresh_examples: 150, label_volume: 500, schedule: "0 3 * * 1", on_drift: true}
    retraining: {start_from: production, replay_ratio: 1.0, fresh_test_share: 0.25,
                 hyperparameters: {learning_rate: 1e-4}}   # over production's own
    gates: {fresh_gain: {min_gain: 0.03}, latency: {max_ratio: 1.5}}
    promotion: {auto_approve: false}
    rollback: {window_s: 1800, min_feedback: 50, max_accuracy_drop: 0.1}
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adapter.errors import PolicyError
from adapter.training.hyperparameters import Hyperparameters
from adapter.training.search import SearchConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TriggerPolicy(_Strict):
    min_fresh_examples: int = Field(100, ge=1, description="a trigger waits until this many fresh examples exist")
    label_volume: int | None = Field(400, ge=1, description="fresh examples since the last retraining that ask "
                                     "for one by themselves; null: never")
    schedule: str | None = Field(None, description="cron expression (UTC) of scheduled retrainings")
    on_drift: bool = Field(True, description="retrain on TuneloopDriftDetected alerts and drift_started events")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"not a cron expression: {value!r}")
        return value


class RetrainPolicy(_Strict):
    start_from: Literal["production", "base"] = Field(
        "production", description="continue the production version, or fine-tune the pre-trained base again")
    base_model: str | None = Field(None, description="with start_from: base; null: production's own base model")
    # Over production's own (its card's): a continued version trains as its parent did, but a few hundred fresh
    # labels want larger steps and more epochs (early stopping keeps the best): on MiniLM adapting from amazon to
    # imdb with 400 labels, +6.0 points at 1e-4 and 5 epochs against +3.7 at its parent's 5e-5 and 3
    # (bench/results/adaptation.md).
    hyperparameters: dict[str, Any] = Field(default_factory=lambda: {"learning_rate": 1e-4, "epochs": 5})
    search: SearchConfig | None = None
    replay_ratio: float = Field(1.0, ge=0, description="rows of production's training data replayed per fresh "
                                "training row, so that the old domain is not forgotten")
    fresh_test_share: float = Field(0.25, gt=0, lt=1, description="the newest share of the fresh examples: the "
                                    "fresh test set, never trained on")
    validation_share: float = Field(0.2, gt=0, lt=1, description="of the older fresh examples, for early stopping")
    seed: int = 42

    @field_validator("hyperparameters")
    @classmethod
    def _valid_hyperparameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        Hyperparameters.model_validate(value)  # refuse a bad policy at start-up, not at the first retraining
        return value

    def hyperparameters_model(self, production: dict[str, Any] | None = None) -> Hyperparameters:
        """The policy's hyperparameters over ``production``'s (a card's), field by field."""
        inherited = {k: v for k, v in (production or {}).items() if k in Hyperparameters.model_fields}
        if "strategy" in self.hyperparameters:
            # Another strategy: neither the parent's strategy knobs nor the learning rate that fitted them.
            inherited.pop("strategy", None)
            inherited.pop("learning_rate", None)
        return Hyperparameters.model_validate({**inherited, **self.hyperparameters})


class PromotionPolicy(_Strict):
    auto_approve: bool = Field(False, description="promote a candidate that passed every gate without waiting "
                               "for an operator")


class RollbackPolicy(_Strict):
    window_s: float = Field(1800, gt=0, description="how long a promotion is watched")
    min_feedback: int = Field(50, ge=1, description="feedback on the new version before its accuracy is judged")
    max_accuracy_drop: float = Field(0.1, ge=0, le=1, description="live accuracy may fall this far below the "
                                     "candidate's fresh-test accuracy before it is rolled back")
    service_metrics_url: str | None = Field(None, description="the service's /metrics, to watch its error rate")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="share of 5xx answers that rolls back")


class AdapterPolicy(_Strict):
    DEFAULT_GATES: ClassVar[dict[str, dict[str, Any]]] = {
        "golden": {}, "fresh_gain": {}, "class_recall": {}, "parity": {}, "latency": {},
    }

    triggers: TriggerPolicy = TriggerPolicy()
    retraining: RetrainPolicy = RetrainPolicy()
    gates: dict[str, dict[str, Any]] = Field(default_factory=lambda: copy.deepcopy(AdapterPolicy.DEFAULT_GATES))
    promotion: PromotionPolicy = PromotionPolicy()
    rollback: RollbackPolicy = RollbackPolicy()

    @field_validator("gates", mode="before")
    @classmethod
    def _merge_gate_defaults(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        merged = copy.deepcopy(cls.DEFAULT_GATES)
        for name, options in value.items():
            if options is None:
                merged.pop(name, None)
            else:
                merged[name] = {**merged.get(name, {}), **options} if isinstance(options, dict) else options
        return merged

    @model_validator(mode="after")
    def _gates_exist(self) -> AdapterPolicy:
        from adapter.loop.gates import build_gates

        build_gates(self.gates)  # unknown gates and bad gate options fail here
        return self

    @classmethod
    def load(cls, path: str | Path | None) -> AdapterPolicy:
        if path is None:
            return cls()
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise PolicyError(f"policy file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise PolicyError(f"policy file {path} is not YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise PolicyError(f"policy file {path} must hold a mapping at the top level")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise PolicyError(f"policy file {path}: {problems}") from None
