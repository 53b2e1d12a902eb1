"""Reading labelled data in every supported format, and a clear error for each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapter.errors import DataError
from adapter.training.data import load_labelled_data, load_test_set, read_table
from tests.conftest import AMAZON, read_sentences


def write_rows(path: Path, rows: list[tuple[str, str]], fmt: str) -> Path:
    if fmt == "csv":
        import csv

        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["review", "sentiment"])
            writer.writerows(rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"review": t, "sentiment": l}) + "\n" for t, l in rows))
    elif fmt == "hf":
        import datasets

        datasets.Dataset.from_dict({"review": [t for t, _ in rows], "sentiment": [l for _, l in rows]}).save_to_disk(path)
    return path


def named(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(t, "positive" if l == "1" else "negative") for t, l in rows]


def test_shared_headerless_tsv_split_is_stratified_and_seeded() -> None:
    a = load_labelled_data(AMAZON, seed=7)
    b = load_labelled_data(AMAZON, seed=7)
    assert a.label_names == ["0", "1"]
    assert a.sizes == {"train": 800, "validation": 100, "test": 100}
    assert sum(a.test.labels) == 50 and sum(a.validation.labels) == 50
    assert a.test.texts == b.test.texts
    # The three splits partition the file's rows (the file itself repeats a few sentences).
    assert sorted(a.train.texts + a.validation.texts + a.test.texts) == sorted(t for t, _ in read_sentences(AMAZON))
    assert a.files[0].rows == 1000 and len(a.files[0].sha256) == 64


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "hf"])
def test_other_formats_with_named_labels(tmp_path: Path, fmt: str) -> None:
    rows = named(read_sentences(AMAZON)[:200])
    suffix = {"csv": ".csv", "jsonl": ".jsonl", "hf": ""}[fmt]
    path = write_rows(tmp_path / f"data{suffix}", rows, fmt)
    data = load_labelled_data(path, text_column="review", label_column="sentiment")
    assert data.label_names == ["negative", "positive"]
    assert sum(data.sizes.values()) == 200


def test_explicit_split_files(tmp_path: Path) -> None:
    rows = read_sentences(AMAZON)
    train = tmp_path / "train.txt"
    test = tmp_path / "test.txt"
    train.write_text("".join(f"{t}\t{l}\n" for t, l in rows[:300]))
    test.write_text("".join(f"{t}\t{l}\n" for t, l in rows[300:350]))
    data = load_labelled_data(train, test_file=test)
    assert len(data.test) == 50 and len(data.train) + len(data.validation) == 300


def test_missing_file() -> None:
    with pytest.raises(DataError, match="data file not found"):
        load_labelled_data("/nonexistent/data.csv")


def test_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    path.write_text("x")
    with pytest.raises(DataError, match="cannot tell the format"):
        load_labelled_data(path)
    with pytest.raises(DataError, match="unknown data format"):
        read_table(AMAZON, fmt="xml")


def test_missing_column(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.csv", read_sentences(AMAZON)[:50], "csv")
    with pytest.raises(DataError, match="has no column 'text'"):
        load_labelled_data(path, label_column="sentiment")


def test_single_class(tmp_path: Path) -> None:
    path = tmp_path / "one.txt"
    path.write_text("".join(f"{t}\t1\n" for t, l in read_sentences(AMAZON)[:50]))
    with pytest.raises(DataError, match="single class"):
        load_labelled_data(path)


def test_empty_texts(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    rows = read_sentences(AMAZON)[:50]
    path.write_text("".join(f"{t}\t{l}\n" for t, l in rows) + "   \t1\n")
    with pytest.raises(DataError, match="1 empty text"):
        load_labelled_data(path)


def test_unknown_label_in_split_file(tmp_path: Path) -> None:
    rows = read_sentences(AMAZON)
    train = tmp_path / "train.txt"
    test = tmp_path / "test.txt"
    train.write_text("".join(f"{t}\t{l}\n" for t, l in rows[:200]))
    test.write_text("".join(f"{t}\t{l}\n" for t, l in rows[200:210]) + "odd one\t2\n")
    with pytest.raises(DataError, match=r"unknown label\(s\) \['2'\]"):
        load_labelled_data(train, test_file=test)
    with pytest.raises(DataError, match="unknown label"):
        load_test_set(test, ["0", "1"])
