"""Loading labelled text and splitting it into train / validation / test.

Formats: CSV, TSV (with or without a header; ``.txt`` files are read as headerless
``text<TAB>label``, the layout of the UCI sentiment-labelled sentences), JSONL, and a folder saved by
Hugging Face ``datasets`` (``save_to_disk``).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from adapter.errors import DataError
from tuneloop.registry import DataFile

FORMATS = ("csv", "tsv", "jsonl", "hf")
_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[int]  # class ids: index into LabelledData.label_names

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class LabelledData:
    label_names: list[str]
    train: Split
    validation: Split
    test: Split
    files: list[DataFile] = field(default_factory=list)

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def detect_format(path: Path, declared: str | None) -> str:
    if declared:
        if declared not in FORMATS:
            raise DataError(f"unknown data format {declared!r}; use one of: {', '.join(FORMATS)}")
        return declared
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return "hf"
        raise DataError(f"{path} is a folder but not a saved Hugging Face dataset (no dataset_info.json)")
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot tell the format of {path.name} from its suffix {path.suffix!r}; "
            f"pass --format ({', '.join(FORMATS)}) or use .csv, .tsv, .txt, .jsonl"
        )
    return fmt


def _read_delimited(path: Path, sep: str, text_column: str, label_column: str) -> pd.DataFrame:
    # Review text is full of quotes; QUOTE_NONE keeps a stray quote from swallowing lines in TSV.
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8", errors="strict") as handle:
        first = handle.readline().rstrip("\n").split(sep)
    has_header = text_column in first or label_column in first
    if not has_header and path.suffix.lower() == ".csv":
        raise DataError(f"{path.name}: no header row naming the columns {text_column!r} and {label_column!r}")
    names = None if has_header else [text_column, label_column]
    try:
        frame = pd.read_csv(path, sep=sep, quoting=quoting, header=0 if has_header else None,
                            names=names, dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path.name} cannot be parsed as {'TSV' if sep == chr(9) else 'CSV'}: {exc}") from None
    return frame


def read_table(path: str | Path, text_column: str = "text", label_column: str = "label",
               fmt: str | None = None) -> pd.DataFrame:
    """Read a labelled file into a frame with exactly the columns ``text`` and ``label`` (strings)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    fmt = detect_format(path, fmt)
    try:
        if fmt == "csv":
            frame = _read_delimited(path, ",", text_column, label_column)
        elif fmt == "tsv":
            frame = _read_delimited(path, "\t", text_column, label_column)
        elif fmt == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            import datasets  # heavy import, only for this format

            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                raise DataError(f"{path} holds several splits ({', '.join(loaded)}); point at one split's folder")
            frame = loaded.to_pandas()
    except ValueError as exc:
        raise DataError(f"{path.name} cannot be read as {fmt}: {exc}") from None
    missing = [c for c in (text_column, label_column) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path.name} has no column {missing[0]!r} (columns: {', '.join(map(str, frame.columns))}); "
            "set --text-column / --label-column"
        )
    frame = pd.DataFrame({"text": frame[text_column].astype(str), "label": frame[label_column].astype(str).str.strip()})
    empty = frame.index[frame["text"].str.strip() == ""]
    if len(empty):
        raise DataError(f"{path.name}: {len(empty)} empty text(s), first at data row {empty[0] + 1}")
    if frame.empty:
        raise DataError(f"{path.name} holds no rows")
    return frame


def file_record(path: str | Path, rows: int) -> DataFile:
    digest = hashlib.sha256()
    target = Path(path)
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    for item in files:
        digest.update(item.read_bytes())
    return DataFile(path=str(target.resolve()), sha256=digest.hexdigest(), rows=rows)


def label_order(values: list[str]) -> list[str]:
    """Integer labels sort numerically (so 0, 1, 2 keep their ids), names alphabetically."""
    unique = set(values)
    if all(v.lstrip("-").isdigit() for v in unique):
        return [str(v) for v in sorted(int(v) for v in unique)]
    return sorted(unique)


def _to_split(frame: pd.DataFrame, index: dict[str, int], source: str) -> Split:
    unknown = sorted(set(frame["label"]) - set(index))
    if unknown:
        raise DataError(f"{source}: unknown label(s) {unknown}; the training data has {sorted(index)}")
    return Split(texts=frame["text"].tolist(), labels=[index[v] for v in frame["label"]])


def load_labelled_data(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    fmt: str | None = None,
    validation_file: str | Path | None = None,
    test_file: str | Path | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 42,
) -> LabelledData:
    """Read the data and split it: explicit split files win, the rest is split stratified with ``seed``."""
    frame = read_table(path, text_column, label_column, fmt)
    files = [file_record(path, len(frame))]
    labels = label_order(frame["label"].tolist())
    if len(labels) < 2:
        raise DataError(f"{Path(path).name} has a single class ({labels[0]!r}); a classifier needs at least two")
    index = {name: i for i, name in enumerate(labels)}

    explicit: dict[str, pd.DataFrame] = {}
    for split_name, split_path in (("validation", validation_file), ("test", test_file)):
        if split_path:
            explicit[split_name] = read_table(split_path, text_column, label_column, fmt)
            files.append(file_record(split_path, len(explicit[split_name])))

    rest = frame
    carved: dict[str, pd.DataFrame] = {}
    taken = 0.0  # share of the whole file already carved off
    for split_name, fraction in (("test", test_fraction), ("validation", validation_fraction)):
        if split_name in explicit:
            continue
        if not 0 < fraction < 1 or taken + fraction >= 1:
            raise DataError(f"{split_name} fraction must leave rows to train on, got {fraction}")
        try:
            rest, carved[split_name] = train_test_split(
                rest, test_size=fraction / (1 - taken), random_state=seed, stratify=rest["label"]
            )
        except ValueError as exc:
            raise DataError(f"cannot make a stratified {split_name} split: {exc}") from None
        taken += fraction
    splits = {**carved, **explicit}
    return LabelledData(
        label_names=labels,
        train=_to_split(rest, index, Path(path).name),
        validation=_to_split(splits["validation"], index, str(validation_file or "validation split")),
        test=_to_split(splits["test"], index, str(test_file or "test split")),
        files=files,
    )


def load_test_set(path: str | Path, label_names: list[str], *, text_column: str = "text",
                  label_column: str = "label", fmt: str | None = None) -> Split:
    """An extra held-out test set (another domain, say), mapped onto an existing label map."""
    frame = read_table(path, text_column, label_column, fmt)
    return _to_split(frame, {name: i for i, name in enumerate(label_names)}, Path(path).name)
