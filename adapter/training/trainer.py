"""One fine-tuning run with the transformers Trainer: a pre-trained encoder (or a registered version to
continue), a classification head, the strategy's trainable weights.

Speed on CPU comes from dynamic padding (pad to the longest text of a batch, not to max_length)
and length-grouped batches (texts of similar length share a batch, so there is little padding).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from sklearn.metrics import f1_score
from sklearn.utils.class_weight import compute_class_weight
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PreTrainedModel,
    PrinterCallback,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from adapter.training.base_model import BaseModelSource, load_tokenizer
from adapter.training.classifier import load_classifier
from adapter.training.data import LabelledData, Split
from adapter.training.hyperparameters import Hyperparameters
from adapter.training.progress import RichProgressCallback
from adapter.training.strategies import trainable_share


@dataclass
class FineTuned:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    hyperparameters: Hyperparameters
    best_validation_f1: float
    epochs_run: float
    train_seconds: float
    train_samples_per_second: float
    trainable_share: float


class _WeightedLossTrainer(Trainer):
    """Cross-entropy with class weights, for imbalanced labels."""

    def __init__(self, *args: Any, class_weights: torch.Tensor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        weight = self.class_weights.to(outputs.logits.device)
        loss = torch.nn.functional.cross_entropy(outputs.logits, labels, weight=weight)
        return (loss, outputs) if return_outputs else loss


def _tokenized(split: Split, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    dataset = Dataset.from_dict({"text": split.texts, "labels": split.labels})
    return dataset.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
        batched=True, remove_columns=["text"],
    )


def _macro_f1(eval_pred: Any) -> dict[str, float]:
    logits, labels = eval_pred
    return {"f1_macro": float(f1_score(labels, np.argmax(logits, axis=1), average="macro"))}


def _quiet_library_progress() -> None:
    """datasets and transformers draw tqdm bars of their own for map() and saving; ours is enough."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def fine_tune(data: LabelledData, hp: Hyperparameters, base: BaseModelSource, *, show_progress: bool = True,
              description: str = "fine-tuning", callbacks: Sequence[TrainerCallback] = ()) -> FineTuned:
    """Fine-tune ``base`` on ``data``: evaluation and a checkpoint each epoch, early stopping on validation
    macro-F1, the best epoch's weights kept. ``callbacks`` are added to the Trainer's own."""
    _quiet_library_progress()
    base.check_labels(data.label_names)
    set_seed(hp.seed)
    strategy = hp.strategy.build()
    model = strategy.prepare(load_classifier(base.weights, data.label_names, hp.dropout))
    tokenizer = load_tokenizer(base, model.config)
    share = trainable_share(model)

    train_ds = _tokenized(data.train, tokenizer, hp.max_length)
    val_ds = _tokenized(data.validation, tokenizer, hp.max_length)
    with tempfile.TemporaryDirectory(prefix="tuneloop-train-") as out_dir:
        args = TrainingArguments(
            output_dir=out_dir,
            learning_rate=hp.learning_rate,
            per_device_train_batch_size=hp.batch_size,
            per_device_eval_batch_size=max(hp.batch_size, 64),
            num_train_epochs=hp.epochs,
            weight_decay=hp.weight_decay,
            warmup_steps=hp.warmup_ratio,  # a float below 1 is a share of all steps
            max_grad_norm=hp.max_grad_norm,
            lr_scheduler_type="linear",
            eval_strategy="epoch",
            save_strategy="epoch",
            save_total_limit=2,
            save_only_model=True,
            load_best_model_at_end=True,
            metric_for_best_model="f1_macro",
            greater_is_better=True,
            train_sampling_strategy="group_by_length",
            logging_strategy="epoch",
            report_to="none",
            disable_tqdm=True,
            seed=hp.seed,
            data_seed=hp.seed,
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        trainer_kwargs: dict[str, Any] = dict(
            model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
            data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
            compute_metrics=_macro_f1,
            callbacks=[EarlyStoppingCallback(early_stopping_patience=hp.patience), *callbacks],
        )
        if hp.class_weights == "balanced":
            classes = np.arange(len(data.label_names))
            weights = compute_class_weight("balanced", classes=classes, y=np.asarray(data.train.labels))
            trainer = _WeightedLossTrainer(**trainer_kwargs, class_weights=torch.tensor(weights, dtype=torch.float))
        else:
            trainer = Trainer(**trainer_kwargs)
        trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; the rich bar reports instead
        trainer.add_callback(RichProgressCallback(description, enabled=show_progress))
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
        best = trainer.state.best_metric
        epochs_run = float(trainer.state.epoch or hp.epochs)
    model = strategy.finalize(trainer.model).eval()
    return FineTuned(
        model=model, tokenizer=tokenizer, hyperparameters=hp,
        best_validation_f1=float(best if best is not None else float("nan")),
        epochs_run=epochs_run, train_seconds=seconds,
        train_samples_per_second=float(result.metrics.get("train_samples_per_second", 0.0))
        or len(data.train) * epochs_run / seconds,
        trainable_share=share,
    )
