"""The hyperparameters of one fine-tuning run: the one place their defaults live.

The CLI, the search and the adapter's policy give only what they change; everything else is a default
from here, or from the strategy's own config (``adapter/training/strategies/*/config.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adapter.training.strategies import CONFIGS, AnyStrategyConfig, FullConfig, StrategyName


class Hyperparameters(BaseModel):
    """Fine-tuning practice for small labelled sets: low learning rate, weight decay, dropout, warmup,
    gradient clipping, and early stopping on validation macro-F1."""

    model_config = ConfigDict(extra="forbid")

    strategy: AnyStrategyConfig = Field(default_factory=FullConfig)
    learning_rate: float = Field(None, gt=0, lt=1, description="unset: the strategy's default",  # type: ignore[assignment]
                                 validate_default=False)
    batch_size: int = Field(32, ge=1, le=1024)
    epochs: int = Field(3, ge=1, le=100)
    weight_decay: float = Field(0.01, ge=0, le=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_length: int = Field(128, ge=8, le=4096)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 42
    class_weights: Literal["none", "balanced"] = "none"
    patience: int = Field(2, ge=1, description="evaluations without a better validation macro-F1 before stopping")

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy_by_name(cls, value: Any) -> Any:
        """``"lora"`` is short for ``{"name": "lora"}`` (the CLI and YAML policies say it that way)."""
        if isinstance(value, str):
            try:
                return {"name": StrategyName(value)}
            except ValueError:
                raise ValueError(f"unknown strategy {value!r}; use one of: "
                                 f"{', '.join(s.value for s in StrategyName)}") from None
        return value

    @model_validator(mode="after")
    def _strategy_learning_rate(self) -> Hyperparameters:
        if self.learning_rate is None:
            self.learning_rate = type(self.strategy).default_learning_rate
        return self

    @classmethod
    def tunable_names(cls, strategy: StrategyName) -> set[str]:
        """What a search space or a policy may set: the run's fields, and ``strategy.<knob>`` for the
        strategy's own."""
        knobs = set(CONFIGS[strategy].model_fields) - {"name"}
        return (set(cls.model_fields) - {"strategy"}) | {f"strategy.{k}" for k in knobs}

    def updated(self, values: dict[str, Any]) -> Hyperparameters:
        """A copy with ``values`` applied (``strategy.<knob>`` keys reach the strategy's config), validated
        anew. The learning rate stays as it is unless given."""
        data = self.model_dump()
        for key, value in values.items():
            section, _, knob = key.partition(".")
            if section == "strategy" and knob:
                data["strategy"][knob] = value
            else:
                data[key] = value
        return Hyperparameters.model_validate(data)
