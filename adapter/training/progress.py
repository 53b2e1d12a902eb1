"""A rich progress bar for the transformers Trainer (its own tqdm bars are switched off)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

console = Console(stderr=True)


class RichProgressCallback(TrainerCallback):
    def __init__(self, description: str, enabled: bool = True) -> None:
        self.description = description
        self.enabled = enabled
        self.progress: Progress | None = None
        self.task: Any = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if not self.enabled:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
        )
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=state.max_steps, status="")

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
        if metrics and "eval_f1_macro" in metrics:
            status = f"epoch {state.epoch:.0f}: val macro-F1 {metrics['eval_f1_macro']:.3f}"
            if self.progress is not None:
                self.progress.update(self.task, status=status)
            else:
                console.log(f"{self.description}: {status}")

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
