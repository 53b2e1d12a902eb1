"""``tuneloop train``: fine-tune, evaluate, export and register a model version."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from adapter.errors import AdapterError
from tuneloop.registry import ModelCard, RegistryError

console = Console()
err = Console(stderr=True)


def metrics_table(card: ModelCard) -> Table:
    table = Table(title=f"{card.model_name} {card.version}: held-out test metrics")
    for col in ("test set", "n", "accuracy", "precision", "recall", "macro-F1", "ECE", *[f"F1 {l}" for l in card.labels]):
        table.add_column(col, justify="right")
    for name, m in card.metrics.items():
        table.add_row(name, str(m.n), f"{m.accuracy:.4f}", f"{m.precision_macro:.4f}", f"{m.recall_macro:.4f}",
                      f"{m.f1_macro:.4f}", f"{m.ece:.4f}", *[f"{m.per_class[l].f1:.4f}" for l in card.labels])
    return table


def parity_table(card: ModelCard) -> Table:
    table = Table(title="ONNX parity against PyTorch (test split)")
    for col in ("graph", "max |Δlogit|", "label agreement", "Δ accuracy", "result"):
        table.add_column(col, justify="right")
    for p in card.parity.values():
        table.add_row(p.file, f"{p.max_abs_logit_diff:.2e}", f"{p.label_agreement:.4f}", f"{p.accuracy_diff:+.4f}",
                      "passed" if p.passed else "FAILED")
    return table


def _parse_named_paths(values: list[str]) -> dict[str, Path]:
    named = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise AdapterError(f"--extra-test takes NAME=PATH, got {value!r}")
        named[name] = Path(path)
    return named


def train(
    data: Annotated[Path, typer.Option("--data", help="Labelled data: CSV, TSV/TXT, JSONL or a saved HF dataset folder.")],
    fmt: Annotated[Optional[str], typer.Option("--format", help="csv, tsv, jsonl or hf (default: from the suffix).")] = None,
    text_column: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    label_column: Annotated[str, typer.Option(help="Column holding the label (names or integers).")] = "label",
    validation_file: Annotated[Optional[Path], typer.Option(help="Explicit validation split.")] = None,
    test_file: Annotated[Optional[Path], typer.Option(help="Explicit test split.")] = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    extra_test: Annotated[list[str], typer.Option("--extra-test", help="Another held-out set, NAME=PATH (repeatable).")] = [],  # noqa: B006
    base_model: Annotated[Optional[str], typer.Option(help="HF model folder or hub id; default: the bundled MiniLM-L6.")] = None,
    model_name: Annotated[Optional[str], typer.Option(help="Name of the model in the registry.")] = None,
    strategy: Annotated[str, typer.Option(help="full, freeze or lora.")] = "full",
    learning_rate: float = 5e-5,
    batch_size: int = 32,
    epochs: int = 3,
    weight_decay: float = 0.01,
    dropout: float = 0.1,
    warmup_ratio: float = 0.1,
    max_length: int = 128,
    max_grad_norm: float = 1.0,
    seed: int = 42,
    class_weights: Annotated[str, typer.Option(help="none or balanced.")] = "none",
    patience: Annotated[int, typer.Option(help="Early-stopping patience, in epochs without a better val macro-F1.")] = 2,
    frozen_layers: Annotated[int, typer.Option(help="freeze: encoder layers frozen from the bottom.")] = 4,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.1,
    search: Annotated[Optional[str], typer.Option(help="Hyperparameter search: grid, random or bayes.")] = None,
    trials: Annotated[int, typer.Option(help="Trial budget of the search.")] = 4,
    search_space: Annotated[Optional[Path], typer.Option(help="YAML search space (default: lr, weight decay, dropout).")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Also export a dynamically quantised int8 graph (CPU).")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also export an fp16 graph (GPU).")] = False,
    registry: Annotated[Optional[str], typer.Option("--registry", help="Registry root (also TUNELOOP_REGISTRY).")] = None,
    config: Annotated[Optional[str], typer.Option("--config", help="YAML settings file.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Fine-tune a pre-trained encoder on labelled text, export it to ONNX and register it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
    from pydantic import ValidationError

    from adapter.pipeline import train_and_register
    from adapter.training.data import load_labelled_data, load_test_set
    from adapter.training.hyperparameters import Hyperparameters
    from adapter.training.search import SearchSpace
    from tuneloop.cli import settings_from_options

    try:
        settings = settings_from_options(config, registry)
        if int8 or fp16:
            settings.export = settings.export.model_copy(update={"int8": int8 or settings.export.int8,
                                                                 "fp16": fp16 or settings.export.fp16})
        try:
            hp = Hyperparameters(
                strategy=strategy, learning_rate=learning_rate, batch_size=batch_size, epochs=epochs,
                weight_decay=weight_decay, dropout=dropout, warmup_ratio=warmup_ratio, max_length=max_length,
                max_grad_norm=max_grad_norm, seed=seed, class_weights=class_weights, patience=patience,
                frozen_layers=frozen_layers, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
            )
        except ValidationError as exc:
            raise AdapterError("invalid hyperparameters: " + "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
        if search is not None and search not in ("grid", "random", "bayes"):
            raise AdapterError(f"unknown search method {search!r}; use grid, random or bayes")
        labelled = load_labelled_data(
            data, text_column=text_column, label_column=label_column, fmt=fmt,
            validation_file=validation_file, test_file=test_file,
            validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed,
        )
        extras = {name: load_test_set(path, labelled.label_names, text_column=text_column,
                                      label_column=label_column, fmt=fmt)
                  for name, path in _parse_named_paths(extra_test).items()}
        space = SearchSpace.from_file(search_space) if search_space else None
        err.print(f"data: {labelled.sizes}, labels {labelled.label_names}; strategy {hp.strategy}")
        outcome = train_and_register(
            labelled, hp, settings, base_model=base_model, model_name=model_name, extra_test_sets=extras,
            search=search, trials=trials, search_space=space, show_progress=progress,  # type: ignore[arg-type]
        )
    except (AdapterError, RegistryError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    card = outcome.card
    console.print(metrics_table(card))
    console.print(parity_table(card))
    t = card.timings
    console.print(f"trained in {t.train_seconds:.1f} s ({t.train_samples_per_second:.1f} samples/s), "
                  f"exported in {t.export_seconds:.1f} s")
    console.print(f"registered [bold]{card.model_name} {outcome.version}[/] in {settings.registry} "
                  f"— state [cyan]{outcome.state.value}[/]. Next: tuneloop models approve {outcome.version}; "
                  f"tuneloop models promote {outcome.version}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
