"""Readers of the metadata people already have: manifests and detection events.

Classification readers return a polars frame in the manifest shape that
`pipeline.audio.read_manifest` reads once the config's data section has
`MANIFEST_SETTINGS`: columns `file`, `label`, `secondary` (secondary labels
joined by ";"), `split` where the source names one, and any columns that a
reader adds. `write_manifest` stores such a frame as a CSV manifest.

Detection readers return one row per annotated event with the columns of
`EVENT_SCHEMA`: the audio `file`, `start` and `end` in seconds, the optional
frequency band `low_frequency` and `high_frequency` in Hz, and the `label`.
A row whose label is null lists a soundscape without events, so that its
windows count as negatives.

Every reader raises `MetadataError` naming the file and the line (or row) of
a malformed entry, and naming the file when a table has no rows.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import pathlib
import re
import string
from collections.abc import Iterable
from typing import Any

import polars as pl

# Data-config fields under which `pipeline.audio.read_manifest` finds the
# columns of a manifest written by `write_manifest`.
MANIFEST_SETTINGS = {
    "data.file_column": "file",
    "data.label_column": "label",
    "data.split_column": "split",
    "data.secondary_column": "secondary",
}

EVENT_SCHEMA = {
    "file": pl.String,
    "start": pl.Float64,
    "end": pl.Float64,
    "low_frequency": pl.Float64,
    "high_frequency": pl.Float64,
    "label": pl.String,
}

# Column names of a Raven selection table (Raven Pro 1.6).
RAVEN_BEGIN = "Begin Time (s)"
RAVEN_END = "End Time (s)"
RAVEN_LOW = "Low Freq (Hz)"
RAVEN_HIGH = "High Freq (Hz)"
RAVEN_FILE = "Begin File"
# Start of a selection within its Begin File, when a table spans several files.
RAVEN_FILE_OFFSET = "File Offset (s)"
RAVEN_SELECTION = "Selection"

XENO_CANTO_QUALITIES = ("A", "B", "C", "D", "E", "no score", "")

# A row of a metadata file and where it is, such as "line 4" or "row 2".
Row = tuple[str, dict[str, Any]]


class MetadataError(ValueError):
    """A metadata file that cannot be read: malformed, empty or missing columns."""


def write_manifest(frame: pl.DataFrame, path: str | pathlib.Path) -> None:
    """Write a frame from a classification reader as a CSV manifest."""
    frame.write_csv(path)


# Rows with their locations, from each file format.


def read_rows(path: str | pathlib.Path) -> list[Row]:
    """Read the rows of a CSV, TSV, Raven .txt, Parquet, JSON or JSONL file.

    Raises MetadataError for an unknown format, a malformed row or a file
    without rows.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise MetadataError(f"metadata file not found: {path}.")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _delimited_rows(path, ",")
    elif suffix in (".tsv", ".txt"):
        rows = _delimited_rows(path, "\t")
    elif suffix == ".parquet":
        rows = [
            (f"row {number}", row)
            for number, row in enumerate(pl.read_parquet(path).iter_rows(named=True), 1)
        ]
    elif suffix == ".jsonl":
        rows = _jsonl_rows(path)
    elif suffix == ".json":
        rows = _json_rows(path)
    else:
        raise MetadataError(
            f"{path}: unsupported metadata format {path.suffix!r}; use .csv, .tsv, .txt, .parquet, "
            ".json or .jsonl."
        )
    if not rows:
        raise MetadataError(f"{path} has no rows; it needs one row per recording or event.")
    return rows


def _delimited_rows(path: pathlib.Path, delimiter: str) -> list[Row]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            return _checked_rows(path, reader)
        except (csv.Error, UnicodeDecodeError) as error:
            raise MetadataError(f"{path}, line {reader.line_num + 1}: unreadable text ({error}).") from error


def _checked_rows(path: pathlib.Path, reader: Any) -> list[Row]:
    """Return the rows of a csv reader as dictionaries, checking each row's field count."""
    header = next(reader, None)
    if header is None or not any(name.strip() for name in header):
        raise MetadataError(f"{path} is empty; it needs a header line and one row per recording or event.")
    header = [name.strip() for name in header]
    rows = []
    for fields in reader:
        if not any(field.strip() for field in fields):
            continue
        if len(fields) != len(header):
            raise MetadataError(
                f"{path}, line {reader.line_num}: expected {len(header)} fields ({', '.join(header)}), "
                f"found {len(fields)}. Fix or remove the row."
            )
        rows.append((f"line {reader.line_num}", dict(zip(header, fields, strict=True))))
    return rows


def _jsonl_rows(path: pathlib.Path) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise MetadataError(
                    f"{path}, line {number}: invalid JSON ({error.msg}). Fix or remove the line."
                ) from error
            if not isinstance(row, dict):
                raise MetadataError(
                    f"{path}, line {number}: expected a JSON object, found {type(row).__name__}."
                )
            rows.append((f"line {number}", row))
    return rows


def _json_rows(path: pathlib.Path) -> list[Row]:
    """Read a JSON list of objects, or an object whose `recordings` is one (a Xeno-Canto API page)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MetadataError(f"{path}, line {error.lineno}: invalid JSON ({error.msg}).") from error
    items = document.get("recordings") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise MetadataError(f"{path}: expected a list of objects or an object with a 'recordings' list.")
    rows = []
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise MetadataError(
                f"{path}, record {number}: expected a JSON object, found {type(item).__name__}."
            )
        rows.append((f"record {number}", item))
    return rows


# Field parsing with errors that name the row.


def _require_columns(path: pathlib.Path, rows: list[Row], required: Iterable[str], purpose: str) -> None:
    available = set().union(*(row.keys() for _, row in rows))
    absent = [column for column in required if column not in available]
    if absent:
        raise MetadataError(
            f"{path} has no column {absent[0]!r}, which {purpose} needs; its columns are "
            f"{', '.join(sorted(available))}."
        )


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _number(path: pathlib.Path, location: str, column: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise MetadataError(f"{path}, {location}: column {column!r} is not a number: {value!r}.")
    return number


def _optional_number(path: pathlib.Path, location: str, column: str, value: Any) -> float | None:
    return None if _text(value) == "" else _number(path, location, column, value)


def _label_list(path: pathlib.Path, location: str, column: str, value: Any) -> list[str]:
    """Parse a list of labels: a list, a JSON or Python list literal, or text split on ';' or ','."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [_text(item) for item in value if _text(item)]
    text = _text(value)
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            try:
                parsed = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise MetadataError(
                    f"{path}, {location}: column {column!r} is not a list: {text!r}."
                ) from None
        return _label_list(path, location, column, list(parsed))
    return [part.strip() for part in re.split(r"[;,]", text) if part.strip()]


def _secondary(labels: Iterable[str], primary: str) -> str:
    """Join secondary labels with ';', without the primary label or repeats."""
    unique = dict.fromkeys(label for label in labels if label and label != primary)
    return ";".join(unique)


def _manifest(records: list[dict[str, Any]], has_split: bool) -> pl.DataFrame:
    frame = pl.DataFrame(
        records, schema_overrides={"file": pl.String, "label": pl.String, "secondary": pl.String}
    )
    return frame if has_split else frame.drop("split", strict=False)


# Classification manifests.


def read_beans_classification(path: str | pathlib.Path, split: str | None = None) -> pl.DataFrame:
    """Read a BEANS classification CSV (columns `path`, `label`) into a manifest.

    BEANS keeps one CSV per split, so `split` names the split of every row;
    a `split` column in the file takes precedence.
    """
    path = pathlib.Path(path)
    rows = read_rows(path)
    _require_columns(path, rows, ("path", "label"), "a BEANS classification table")
    records = []
    for location, row in rows:
        file, label = _text(row.get("path")), _text(row.get("label"))
        if not file or not label:
            raise MetadataError(
                f"{path}, {location}: 'path' and 'label' must both be set, got {file!r} and {label!r}."
            )
        row_split = _text(row.get("split")) or split
        records.append({"file": file, "label": label, "secondary": "", "split": row_split})
    return _manifest(records, has_split=split is not None or any("split" in row for _, row in rows))


def read_birdset(
    path: str | pathlib.Path,
    class_names: list[str] | None = None,
    split: str | None = None,
    file_column: str = "filepath",
) -> pl.DataFrame:
    """Read BirdSet metadata (one row per recording) into a manifest.

    The label is `ebird_code`, or the first of `ebird_code_multilabel` when
    `ebird_code` is empty. The other multilabel codes and
    `ebird_code_secondary` become secondary labels. Hugging Face stores the
    codes as integer class indices, which `class_names` (the ClassLabel
    names) turns into eBird codes.
    """
    path = pathlib.Path(path)
    rows = read_rows(path)
    _require_columns(path, rows, (file_column,), "BirdSet metadata")
    if not any("ebird_code" in row or "ebird_code_multilabel" in row for _, row in rows):
        raise MetadataError(f"{path} has neither an 'ebird_code' nor an 'ebird_code_multilabel' column.")
    records = [_birdset_record(path, location, row, class_names, file_column) for location, row in rows]
    for record, (_, row) in zip(records, rows, strict=True):
        record["split"] = _text(row.get("split")) or split
    return _manifest(records, has_split=split is not None or any("split" in row for _, row in rows))


def _birdset_record(
    path: pathlib.Path, location: str, row: dict[str, Any], class_names: list[str] | None, file_column: str
) -> dict[str, Any]:
    codes = {}
    for column in ("ebird_code", "ebird_code_multilabel", "ebird_code_secondary"):
        values = _label_list(path, location, column, row.get(column))
        codes[column] = [_ebird_name(path, location, column, value, class_names) for value in values]
    multilabel = codes["ebird_code_multilabel"]
    primary = (codes["ebird_code"] or multilabel or [""])[0]
    file = _text(row.get(file_column))
    if not file:
        raise MetadataError(
            f"{path}, {location}: column {file_column!r} is empty; every row needs an audio file."
        )
    if not primary:
        raise MetadataError(
            f"{path}, {location}: no label; 'ebird_code' and 'ebird_code_multilabel' are both empty. "
            "Remove the row or give it a label."
        )
    secondary = _secondary(multilabel + codes["ebird_code_secondary"], primary)
    return {"file": file, "label": primary, "secondary": secondary}


def _ebird_name(
    path: pathlib.Path, location: str, column: str, value: str, class_names: list[str] | None
) -> str:
    """Return an eBird code, looking integer class indices up in `class_names`."""
    if not value.lstrip("-").isdigit():
        return value
    if class_names is None:
        raise MetadataError(
            f"{path}, {location}: column {column!r} contains the class index {value}; pass class_names "
            "(the dataset's ClassLabel names) to turn indices into eBird codes."
        )
    index = int(value)
    if not 0 <= index < len(class_names):
        raise MetadataError(
            f"{path}, {location}: column {column!r} has class index {index}, outside the "
            f"{len(class_names)} class_names."
        )
    return class_names[index]


def read_xeno_canto(
    path: str | pathlib.Path, file_pattern: str = "XC{id}.mp3", split: str | None = None
) -> pl.DataFrame:
    """Read Xeno-Canto metadata (API JSON, CSV or Parquet) into a manifest.

    The label is the scientific name `gen sp`, and the species listed in
    `also` become secondary labels. `file_pattern` builds each audio file's
    name from the row's fields, as `str.format` does. The manifest keeps the
    quality grade `q` as `quality` and `length` as `length_seconds`, so
    `subset.column` can select by either.
    """
    path = pathlib.Path(path)
    rows = read_rows(path)
    pattern_fields = [field for _, field, _, _ in string.Formatter().parse(file_pattern) if field]
    _require_columns(path, rows, ("gen", "sp", "q", "length", *pattern_fields), "Xeno-Canto metadata")
    records = []
    for location, row in rows:
        record = _xeno_canto_record(path, location, row)
        record["file"] = file_pattern.format(**{field: _text(row.get(field)) for field in pattern_fields})
        record["split"] = _text(row.get("split")) or split
        records.append(record)
    frame = _manifest(records, has_split=split is not None or any("split" in row for _, row in rows))
    return frame.select("file", pl.exclude("file"))


def _xeno_canto_record(path: pathlib.Path, location: str, row: dict[str, Any]) -> dict[str, Any]:
    label = f"{_text(row.get('gen'))} {_text(row.get('sp'))}".strip()
    if not _text(row.get("gen")) or not _text(row.get("sp")):
        raise MetadataError(f"{path}, {location}: 'gen' and 'sp' must both be set, got {label!r}.")
    quality = _text(row.get("q"))
    if quality not in XENO_CANTO_QUALITIES:
        raise MetadataError(
            f"{path}, {location}: quality 'q' is {quality!r}; expected one of A, B, C, D, E or 'no score'."
        )
    also = _label_list(path, location, "also", row.get("also"))
    return {
        "label": label,
        # NOTE: pipeline.data splits secondary labels on spaces as well as
        # ';', so a two-word name in `also` is not matched to its class there.
        "secondary": _secondary(also, label),
        "quality": quality,
        "length_seconds": _duration_seconds(path, location, row.get("length")),
    }


def _duration_seconds(path: pathlib.Path, location: str, value: Any) -> float:
    """Parse a Xeno-Canto length such as "1:05" or "1:02:03", or plain seconds."""
    text = _text(value)
    parts = text.split(":")
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        numbers = []
    if not numbers or len(numbers) > 3 or any(number < 0 for number in numbers):
        raise MetadataError(f"{path}, {location}: 'length' is {text!r}; expected m:ss, h:mm:ss or seconds.")
    seconds = 0.0
    for number in numbers:
        seconds = seconds * 60 + number
    return seconds


# Detection events.


def _events_frame(records: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(records, schema=EVENT_SCHEMA, orient="row")


def _event(
    path: pathlib.Path, location: str, file: str, times: tuple[Any, Any], band: tuple[Any, Any], label: str
) -> dict[str, Any]:
    """Check and return one event; an empty label with empty times lists a file without events."""
    if not file:
        raise MetadataError(f"{path}, {location}: the audio file is empty; every event needs one.")
    if not label and all(_text(time) == "" for time in times):
        return {
            "file": file,
            "start": None,
            "end": None,
            "low_frequency": None,
            "high_frequency": None,
            "label": None,
        }
    if not label:
        raise MetadataError(f"{path}, {location}: the event from {times[0]} to {times[1]} s has no label.")
    start = _number(path, location, "start", times[0])
    end = _number(path, location, "end", times[1])
    if start < 0 or end <= start:
        raise MetadataError(
            f"{path}, {location}: invalid event time span {start} to {end} s; the start must be at "
            "least 0 and before the end."
        )
    low = _optional_number(path, location, "low frequency", band[0])
    high = _optional_number(path, location, "high frequency", band[1])
    if low is not None and high is not None and high < low:
        raise MetadataError(
            f"{path}, {location}: the high frequency {high} Hz is below the low frequency {low} Hz."
        )
    return {
        "file": file,
        "start": start,
        "end": end,
        "low_frequency": low,
        "high_frequency": high,
        "label": label,
    }


def read_detection_csv(path: str | pathlib.Path) -> pl.DataFrame:
    """Read a CSV of events (columns file, start, end, label; optional low_frequency, high_frequency).

    Times are in seconds and frequencies in Hz. A row with an empty label
    and empty times lists a file without events.
    """
    path = pathlib.Path(path)
    rows = read_rows(path)
    _require_columns(path, rows, ("file", "start", "end", "label"), "a detection table")
    records = []
    for location, row in rows:
        times = (row.get("start"), row.get("end"))
        band = (row.get("low_frequency"), row.get("high_frequency"))
        records.append(_event(path, location, _text(row.get("file")), times, band, _text(row.get("label"))))
    return _events_frame(records)


def read_beans_detection(path: str | pathlib.Path) -> pl.DataFrame:
    """Read a BEANS detection JSONL file: per line a `path` and `annotations` of `st`, `ed`, `label`.

    A line without annotations lists a file without events.
    """
    path = pathlib.Path(path)
    records = []
    for location, row in read_rows(path):
        file = _text(row.get("path"))
        annotations = row.get("annotations")
        if not isinstance(annotations, list):
            raise MetadataError(f"{path}, {location}: 'annotations' must be a list, got {annotations!r}.")
        if not annotations:
            records.append(_event(path, location, file, ("", ""), (None, None), ""))
        for annotation in annotations:
            if not isinstance(annotation, dict):
                raise MetadataError(
                    f"{path}, {location}: an annotation must be an object, got {annotation!r}."
                )
            times = (annotation.get("st"), annotation.get("ed"))
            records.append(_event(path, location, file, times, (None, None), _text(annotation.get("label"))))
    return _events_frame(records)


def read_raven_selections(
    path: str | pathlib.Path,
    label_column: str = "Annotation",
    audio_file: str = "",
    allow_empty: bool = False,
) -> pl.DataFrame:
    """Read a Raven selection table (tab-separated) into events.

    The audio file of a selection is its `Begin File` column, else
    `audio_file`, else the table's name up to ".Table." (Raven's default
    naming, without the audio suffix). A selection that appears in several
    views (waveform and spectrogram) is read once. With `allow_empty`, a
    table without selections lists its audio file without events.
    """
    path = pathlib.Path(path)
    default_file = audio_file or path.name.split(".Table.")[0]
    try:
        rows = read_rows(path)
    except MetadataError:
        if allow_empty and _has_header_only(path):
            return _events_frame([_event(path, "line 1", default_file, ("", ""), (None, None), "")])
        raise
    _require_columns(path, rows, (RAVEN_BEGIN, RAVEN_END, label_column), "a Raven selection table")
    records, seen = [], set()
    for location, row in rows:
        selection = _text(row.get(RAVEN_SELECTION)) or location
        if selection in seen:
            continue
        seen.add(selection)
        file = _text(row.get(RAVEN_FILE)) or default_file
        times = _raven_times(path, location, row)
        band = (row.get(RAVEN_LOW), row.get(RAVEN_HIGH))
        label = _text(row.get(label_column))
        if not label:
            raise MetadataError(f"{path}, {location}: selection {selection} has an empty {label_column!r}.")
        records.append(_event(path, location, file, times, band, label))
    return _events_frame(records)


def _raven_times(path: pathlib.Path, location: str, row: dict[str, Any]) -> tuple[Any, Any]:
    """Return a selection's start and end within its audio file.

    Begin and end times count from the start of the table's first file, so
    a table that spans several files places a selection in its own file by
    its file offset.
    """
    if _text(row.get(RAVEN_FILE_OFFSET)) == "":
        return row.get(RAVEN_BEGIN), row.get(RAVEN_END)
    begin = _number(path, location, "start", row.get(RAVEN_BEGIN))
    end = _number(path, location, "end", row.get(RAVEN_END))
    offset = _number(path, location, RAVEN_FILE_OFFSET, row.get(RAVEN_FILE_OFFSET))
    return offset, offset + (end - begin)


def _has_header_only(path: pathlib.Path) -> bool:
    lines = [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    return len(lines) == 1


def read_events(path: str | pathlib.Path, label_column: str = "Annotation") -> pl.DataFrame:
    """Read detection events from a CSV, a BEANS JSONL, a Raven table or a folder of Raven tables.

    In a folder every `*.selections.txt` file is a table, and a table
    without selections lists its audio file without events.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        tables = sorted(path.glob("*.selections.txt"))
        if not tables:
            raise MetadataError(f"no Raven selection tables (*.selections.txt) in the folder {path}.")
        frames = [read_raven_selections(table, label_column, allow_empty=True) for table in tables]
        return pl.concat(frames)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_beans_detection(path)
    if suffix == ".csv":
        return read_detection_csv(path)
    if suffix in (".txt", ".tsv"):
        return read_raven_selections(path, label_column)
    raise MetadataError(
        f"{path}: unsupported annotation format {path.suffix!r}; use a .csv, a BEANS .jsonl, a Raven "
        "selection table (.txt) or a folder of Raven tables."
    )
