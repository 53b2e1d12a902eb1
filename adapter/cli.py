"""``tuneloop train``: fine-tune, evaluate, export and register a model version."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from adapter.errors import AdapterError
from tuneloop.registry import ModelCard, Registry, RegistryError, State

if TYPE_CHECKING:
    from adapter.training.hyperparameters import Hyperparameters
    from adapter.training.search import SearchConfig

console = Console()
err = Console(stderr=True, soft_wrap=True)  # one line per error, however narrow the terminal


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


def _given(**options: object) -> dict[str, object]:
    """The options the user gave: an option left out keeps the default of the one place that owns it."""
    return {name: value for name, value in options.items() if value is not None}


def _hyperparameters(strategy: str | None, run: dict[str, object], knobs: dict[str, object]) -> Hyperparameters:
    """Hyperparameters from the given options; ``knobs`` are the strategy's own (``--lora-r`` → ``r``)."""
    from pydantic import ValidationError

    from adapter.training.hyperparameters import Hyperparameters
    from adapter.training.strategies import CONFIGS, StrategyName

    values: dict[str, object] = dict(run)
    if strategy is not None:
        values["strategy"] = strategy
    if knobs:
        name = strategy or StrategyName.FULL.value
        config = CONFIGS.get(name)  # type: ignore[call-overload]
        misplaced = [_KNOB_OPTIONS[k] for k in knobs if config is None or k not in config.model_fields]
        if misplaced:
            verb = "is not an option" if len(misplaced) == 1 else "are not options"
            raise AdapterError(f"{', '.join(misplaced)} {verb} of --strategy {name}")
        values["strategy"] = {"name": name, **knobs}
    try:
        return Hyperparameters.model_validate(values)
    except ValidationError as exc:
        raise AdapterError("invalid hyperparameters: " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None


_KNOB_OPTIONS = {"frozen_layers": "--frozen-layers", "r": "--lora-r", "alpha": "--lora-alpha",
                 "dropout": "--lora-dropout"}


def _search(method: str | None, trials: int | None, space_file: Path | None) -> SearchConfig | None:
    from adapter.training.search import SearchConfig, SearchMethod, SearchSpace

    if method is None:
        if trials is not None or space_file is not None:
            raise AdapterError("--trials and --search-space need --search grid|random|bayes")
        return None
    try:
        chosen = SearchMethod(method)
    except ValueError:
        raise AdapterError(f"unknown search method {method!r}; use "
                           f"{', '.join(m.value for m in SearchMethod)}") from None
    space = SearchSpace.from_file(space_file) if space_file else None
    return SearchConfig(method=chosen, space=space, **_given(trials=trials))


def train(
    data: Annotated[Path, typer.Option("--data", help="Labelled data: CSV, TSV/TXT, JSONL or a saved HF dataset folder.")],
    fmt: Annotated[Optional[str], typer.Option("--format", help="csv, tsv, jsonl or hf (default: from the suffix).")] = None,
    text_column: Annotated[Optional[str], typer.Option(help="Column holding the text [default: text].")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Column holding the label (names or integers) [default: label].")] = None,
    validation_file: Annotated[Optional[Path], typer.Option(help="Explicit validation split.")] = None,
    test_file: Annotated[Optional[Path], typer.Option(help="Explicit test split.")] = None,
    validation_fraction: Annotated[Optional[float], typer.Option(help="Share held out for validation [default: 0.1].")] = None,
    test_fraction: Annotated[Optional[float], typer.Option(help="Share held out for the test [default: 0.1].")] = None,
    extra_test: Annotated[list[str], typer.Option("--extra-test", help="Another held-out set, NAME=PATH (repeatable).")] = [],  # noqa: B006
    base_model: Annotated[Optional[str], typer.Option(
        help="HF model folder or hub id, or a registered version (v3) to continue; default: the bundled MiniLM-L6.")] = None,
    model_name: Annotated[Optional[str], typer.Option(help="Name of the model in the registry.")] = None,
    strategy: Annotated[Optional[str], typer.Option(help="full, freeze or lora [default: full].")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(
        help="[default: the strategy's: 5e-5 full and freeze, 1e-3 lora]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="[default: 32]")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="[default: 3]")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="[default: 0.01]")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="[default: 0.1]")] = None,
    warmup_ratio: Annotated[Optional[float], typer.Option(help="[default: 0.1]")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Tokens per text [default: 128].")] = None,
    max_grad_norm: Annotated[Optional[float], typer.Option(help="[default: 1.0]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the training run and of the splits [default: 42].")] = None,
    class_weights: Annotated[Optional[str], typer.Option(help="none or balanced [default: none].")] = None,
    patience: Annotated[Optional[int], typer.Option(
        help="Early-stopping patience, in epochs without a better val macro-F1 [default: 2].")] = None,
    frozen_layers: Annotated[Optional[int], typer.Option(help="freeze: encoder layers frozen from the bottom [default: 4].")] = None,
    lora_r: Annotated[Optional[int], typer.Option(help="lora: rank of the adapters [default: 8].")] = None,
    lora_alpha: Annotated[Optional[int], typer.Option(help="lora: scale of the adapters [default: 16].")] = None,
    lora_dropout: Annotated[Optional[float], typer.Option(help="lora: dropout on the adapters [default: 0.1].")] = None,
    search: Annotated[Optional[str], typer.Option(help="Hyperparameter search: grid, random or bayes.")] = None,
    trials: Annotated[Optional[int], typer.Option(help="Trial budget of the search [default: 4].")] = None,
    search_space: Annotated[Optional[Path], typer.Option(help="YAML search space (default: lr, weight decay, dropout).")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Also export a dynamically quantised int8 graph (CPU).")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also export an fp16 graph (GPU).")] = False,
    registry: Annotated[Optional[str], typer.Option("--registry", help="Registry root (also TUNELOOP_REGISTRY).")] = None,
    config: Annotated[Optional[str], typer.Option("--config", help="YAML settings file.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Fine-tune a pre-trained encoder on labelled text, export it to ONNX and register it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
    from adapter.pipeline import train_candidate
    from adapter.training.data import load_labelled_data, load_test_set
    from tuneloop.cli import current_actor, settings_from_options

    try:
        settings = settings_from_options(config, registry)
        if int8 or fp16:
            settings.export = settings.export.model_copy(update={"int8": int8 or settings.export.int8,
                                                                 "fp16": fp16 or settings.export.fp16})
        hp = _hyperparameters(
            strategy,
            _given(learning_rate=learning_rate, batch_size=batch_size, epochs=epochs, weight_decay=weight_decay,
                   dropout=dropout, warmup_ratio=warmup_ratio, max_length=max_length, max_grad_norm=max_grad_norm,
                   seed=seed, class_weights=class_weights, patience=patience),
            _given(frozen_layers=frozen_layers, r=lora_r, alpha=lora_alpha, dropout=lora_dropout),
        )
        search_config = _search(search, trials, search_space)
        columns = _given(text_column=text_column, label_column=label_column, fmt=fmt)
        labelled = load_labelled_data(
            data, **columns, validation_file=validation_file, test_file=test_file, seed=hp.seed,
            **_given(validation_fraction=validation_fraction, test_fraction=test_fraction),
        )
        extras = {name: load_test_set(path, labelled.label_names, **columns)
                  for name, path in _parse_named_paths(extra_test).items()}
        err.print(f"data: {labelled.sizes}, labels {labelled.label_names}; strategy {hp.strategy.name.value}, "
                  f"learning rate {hp.learning_rate:g}")
        outcome = train_candidate(
            labelled, hp, settings, base_model=base_model, model_name=model_name, extra_test_sets=extras,
            search=search_config, actor=current_actor(None), show_progress=progress,
        )
        # ONNX parity, checked before registering, is the gate this command runs; the adapter runs its own.
        registry_ = Registry(settings.registry)
        registry_.transition(outcome.version, State.AWAITING_APPROVAL, current_actor(None), "ONNX parity passed")
    except (AdapterError, RegistryError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    card = outcome.card
    console.print(metrics_table(card))
    console.print(parity_table(card))
    t = card.timings
    console.print(f"trained in {t.train_seconds:.1f} s ({t.train_samples_per_second:.1f} samples/s), "
                  f"exported in {t.export_seconds:.1f} s")
    lineage = f" (continues {card.parent_version})" if card.parent_version else ""
    console.print(f"registered [bold]{card.model_name} {outcome.version}[/]{lineage} in {settings.registry} "
                  f"— state [cyan]{State.AWAITING_APPROVAL.value}[/]. Next: tuneloop models approve "
                  f"{outcome.version}; tuneloop models promote {outcome.version}")


def register(app: typer.Typer) -> None:
    from adapter.admin.cli import register as register_admin
    from adapter.loop.cli import register as register_loop

    app.command("train")(train)
    register_loop(app)
    register_admin(app)
