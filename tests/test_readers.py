"""Readers of BEANS, BirdSet, Xeno-Canto, Raven and plain CSV metadata, on small files."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import polars as pl
import pytest
import soundfile

from pipeline import audio, readers
from pipeline import config as config_lib
from pipeline.readers import MetadataError


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    return path


# BEANS classification.


def test_beans_classification_reads_rows(tmp_path):
    path = _write(tmp_path / "train.csv", "path,label\nwav/a.wav,dog\nwav/b.wav,cat\n")

    frame = readers.read_beans_classification(path, split="train")

    assert frame.columns == ["file", "label", "secondary", "split"]
    assert frame["file"].to_list() == ["wav/a.wav", "wav/b.wav"]
    assert frame["label"].to_list() == ["dog", "cat"]
    assert frame["split"].to_list() == ["train", "train"]


def test_beans_classification_without_split_has_no_split_column(tmp_path):
    path = _write(tmp_path / "train.csv", "path,label\nwav/a.wav,dog\n")

    frame = readers.read_beans_classification(path)

    assert "split" not in frame.columns


def test_beans_classification_malformed_row_names_line(tmp_path):
    path = _write(tmp_path / "train.csv", "path,label\nwav/a.wav,dog\nwav/b.wav,cat,extra\n")

    with pytest.raises(MetadataError, match=r"train\.csv, line 3: expected 2 fields"):
        readers.read_beans_classification(path)


def test_beans_classification_empty_label_names_line(tmp_path):
    path = _write(tmp_path / "train.csv", "path,label\nwav/a.wav,\n")

    with pytest.raises(MetadataError, match=r"line 2: 'path' and 'label' must both be set"):
        readers.read_beans_classification(path)


@pytest.mark.parametrize("text", ["", "path,label\n"])
def test_beans_classification_empty_table_raises(tmp_path, text):
    path = _write(tmp_path / "train.csv", text)

    with pytest.raises(MetadataError, match="train.csv"):
        readers.read_beans_classification(path)


def test_beans_classification_missing_column_lists_columns(tmp_path):
    path = _write(tmp_path / "train.csv", "file,species\na.wav,dog\n")

    with pytest.raises(MetadataError, match=r"no column 'path'.*file, species"):
        readers.read_beans_classification(path)


# BEANS detection.


def test_beans_detection_reads_events_and_empty_files(tmp_path):
    lines = [
        {"path": "wav/a.wav", "length": 60, "annotations": [{"st": 1.0, "ed": 2.5, "label": "gibbon"}]},
        {"path": "wav/b.wav", "length": 60, "annotations": []},
    ]
    path = _write(tmp_path / "test.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")

    events = readers.read_beans_detection(path)

    assert events.columns == list(readers.EVENT_SCHEMA)
    assert events.height == 2
    assert events.row(0, named=True)["label"] == "gibbon"
    assert events.row(0, named=True)["start"] == 1.0
    assert events.row(0, named=True)["end"] == 2.5
    assert events.row(1, named=True)["file"] == "wav/b.wav"
    assert events.row(1, named=True)["label"] is None


def test_beans_detection_invalid_json_names_line(tmp_path):
    path = _write(tmp_path / "test.jsonl", '{"path": "a.wav", "annotations": []}\n{"path": "b.wav", \n')

    with pytest.raises(MetadataError, match=r"test\.jsonl, line 2: invalid JSON"):
        readers.read_beans_detection(path)


def test_beans_detection_reversed_event_names_line(tmp_path):
    line = {"path": "a.wav", "annotations": [{"st": 3.0, "ed": 2.0, "label": "x"}]}
    path = _write(tmp_path / "test.jsonl", json.dumps(line) + "\n")

    with pytest.raises(MetadataError, match=r"line 1: invalid event time span 3.0 to 2.0"):
        readers.read_beans_detection(path)


def test_beans_detection_empty_file_raises(tmp_path):
    path = _write(tmp_path / "test.jsonl", "\n")

    with pytest.raises(MetadataError, match="has no rows"):
        readers.read_beans_detection(path)


# BirdSet.


def test_birdset_csv_with_list_columns(tmp_path):
    text = (
        "filepath,ebird_code,ebird_code_multilabel,ebird_code_secondary\n"
        "\"a.ogg\",amerob,\"['amerob']\",\"['norcar', 'blujay']\"\n"
        "\"b.ogg\",,\"['sonspa', 'amerob']\",[]\n"
    )
    path = _write(tmp_path / "birdset.csv", text)

    frame = readers.read_birdset(path, split="train")

    assert frame["label"].to_list() == ["amerob", "sonspa"]
    assert frame["secondary"].to_list() == ["norcar;blujay", "amerob"]
    assert frame["split"].to_list() == ["train", "train"]


def test_birdset_parquet_with_class_indices(tmp_path):
    path = tmp_path / "birdset.parquet"
    pl.DataFrame(
        {
            "filepath": ["a.ogg", "b.ogg"],
            "ebird_code": [2, 0],
            "ebird_code_multilabel": [[2], [0, 1]],
            "ebird_code_secondary": [["norcar"], []],
        }
    ).write_parquet(path)

    frame = readers.read_birdset(path, class_names=["amerob", "blujay", "sonspa"])

    assert frame["label"].to_list() == ["sonspa", "amerob"]
    assert frame["secondary"].to_list() == ["norcar", "blujay"]


def test_birdset_class_index_without_names_raises(tmp_path):
    path = tmp_path / "birdset.parquet"
    pl.DataFrame({"filepath": ["a.ogg"], "ebird_code": [3]}).write_parquet(path)

    with pytest.raises(
        MetadataError, match=r"row 1: column 'ebird_code' contains the class index 3; pass class_names"
    ):
        readers.read_birdset(path)


def test_birdset_malformed_row_names_line(tmp_path):
    path = _write(tmp_path / "birdset.csv", "filepath,ebird_code\na.ogg,amerob\nb.ogg\n")

    with pytest.raises(MetadataError, match=r"birdset\.csv, line 3: expected 2 fields"):
        readers.read_birdset(path)


def test_birdset_row_without_label_names_line(tmp_path):
    path = _write(tmp_path / "birdset.csv", "filepath,ebird_code,ebird_code_multilabel\na.ogg,,[]\n")

    with pytest.raises(MetadataError, match=r"line 2: no label"):
        readers.read_birdset(path)


def test_birdset_empty_table_raises(tmp_path):
    path = tmp_path / "birdset.parquet"
    pl.DataFrame(
        {"filepath": [], "ebird_code": []}, schema={"filepath": pl.String, "ebird_code": pl.String}
    ).write_parquet(path)

    with pytest.raises(MetadataError, match="has no rows"):
        readers.read_birdset(path)


# Xeno-Canto.


def _xeno_canto_page(recordings: list[dict]) -> str:
    return json.dumps({"numRecordings": str(len(recordings)), "recordings": recordings})


def test_xeno_canto_api_page(tmp_path):
    recordings = [
        {
            "id": "123",
            "gen": "Turdus",
            "sp": "merula",
            "also": ["Parus major", "Turdus merula"],
            "q": "A",
            "length": "1:05",
        },
        {"id": "456", "gen": "Parus", "sp": "major", "also": [], "q": "no score", "length": "0:07"},
    ]
    path = _write(tmp_path / "page.json", _xeno_canto_page(recordings))

    frame = readers.read_xeno_canto(path, split="train")

    assert frame["file"].to_list() == ["XC123.mp3", "XC456.mp3"]
    assert frame["label"].to_list() == ["Turdus merula", "Parus major"]
    assert frame["secondary"].to_list() == ["Parus major", ""]
    assert frame["quality"].to_list() == ["A", "no score"]
    assert frame["length_seconds"].to_list() == [65.0, 7.0]


def test_xeno_canto_csv_with_file_pattern(tmp_path):
    text = (
        "id,gen,sp,also,q,length,file-name\n"
        '7,Sylvia,atricapilla,"Erithacus rubecula; Fringilla coelebs",B,1:02:03,x.wav\n'
    )
    path = _write(tmp_path / "xc.csv", text)

    frame = readers.read_xeno_canto(path, file_pattern="{file-name}")

    assert frame["file"].to_list() == ["x.wav"]
    assert frame["secondary"].to_list() == ["Erithacus rubecula;Fringilla coelebs"]
    assert frame["length_seconds"].to_list() == [3723.0]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("length", "abc", r"record 1: 'length' is 'abc'"),
        ("q", "F", r"record 1: quality 'q' is 'F'"),
        ("gen", "", r"record 1: 'gen' and 'sp' must both be set"),
    ],
)
def test_xeno_canto_malformed_record_names_it(tmp_path, field, value, message):
    record = {"id": "1", "gen": "Turdus", "sp": "merula", "also": [], "q": "A", "length": "0:10"}
    record[field] = value
    path = _write(tmp_path / "page.json", _xeno_canto_page([record]))

    with pytest.raises(MetadataError, match=message):
        readers.read_xeno_canto(path)


def test_xeno_canto_malformed_csv_row_names_line(tmp_path):
    path = _write(tmp_path / "xc.csv", "id,gen,sp,also,q,length\n1,Turdus,merula,,A\n")

    with pytest.raises(MetadataError, match=r"xc\.csv, line 2: expected 6 fields"):
        readers.read_xeno_canto(path)


def test_xeno_canto_empty_page_raises(tmp_path):
    path = _write(tmp_path / "page.json", _xeno_canto_page([]))

    with pytest.raises(MetadataError, match="has no rows"):
        readers.read_xeno_canto(path)


# Raven selection tables and plain detection CSVs.

RAVEN_HEADER = (
    "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\n"
)


def test_raven_table_reads_each_selection_once(tmp_path):
    text = (
        RAVEN_HEADER
        + "1\tWaveform 1\t1\t1.5\t3.0\t2000\t8000\tNOCA\n"
        + "1\tSpectrogram 1\t1\t1.5\t3.0\t2000\t8000\tNOCA\n"
        + "2\tSpectrogram 1\t1\t10.0\t12.25\t\t\tBLJA\n"
    )
    path = _write(tmp_path / "site1.Table.1.selections.txt", text)

    events = readers.read_raven_selections(path, label_column="Species")

    assert events.height == 2
    assert events["file"].to_list() == ["site1", "site1"]
    assert events["label"].to_list() == ["NOCA", "BLJA"]
    assert events["low_frequency"].to_list() == [2000.0, None]
    assert events["end"].to_list() == [3.0, 12.25]


def test_raven_table_spanning_files_uses_file_offset(tmp_path):
    header = "Selection\tBegin Time (s)\tEnd Time (s)\tBegin File\tFile Offset (s)\tAnnotation\n"
    text = header + "1\t5.0\t6.5\tfirst.wav\t5.0\tNOCA\n" + "2\t62.0\t63.0\tsecond.wav\t2.0\tBLJA\n"
    path = _write(tmp_path / "night.Table.1.selections.txt", text)

    events = readers.read_raven_selections(path)

    assert events["file"].to_list() == ["first.wav", "second.wav"]
    assert events["start"].to_list() == [5.0, 2.0]
    assert events["end"].to_list() == [6.5, 3.0]


def test_raven_table_missing_label_column_names_it(tmp_path):
    path = _write(
        tmp_path / "a.Table.1.selections.txt", RAVEN_HEADER + "1\tSpectrogram 1\t1\t1\t2\t0\t100\tNOCA\n"
    )

    with pytest.raises(MetadataError, match=r"no column 'Annotation'"):
        readers.read_raven_selections(path)


def test_raven_table_malformed_row_names_line(tmp_path):
    text = RAVEN_HEADER + "1\tSpectrogram 1\t1\t1.5\tsoon\t0\t100\tNOCA\n"
    path = _write(tmp_path / "a.Table.1.selections.txt", text)

    with pytest.raises(MetadataError, match=r"line 2: column 'end' is not a number: 'soon'"):
        readers.read_raven_selections(path, label_column="Species")


def test_raven_empty_table_raises_unless_allowed(tmp_path):
    path = _write(tmp_path / "quiet.Table.1.selections.txt", RAVEN_HEADER)

    with pytest.raises(MetadataError, match="has no rows"):
        readers.read_raven_selections(path, label_column="Species")
    events = readers.read_raven_selections(path, label_column="Species", allow_empty=True)

    assert events["file"].to_list() == ["quiet"]
    assert events["label"].to_list() == [None]


def test_raven_folder_lists_quiet_files(tmp_path):
    _write(tmp_path / "a.Table.1.selections.txt", RAVEN_HEADER + "1\tSpectrogram 1\t1\t1\t2\t0\t100\tNOCA\n")
    _write(tmp_path / "b.Table.1.selections.txt", RAVEN_HEADER)

    events = readers.read_events(tmp_path, label_column="Species")

    assert events["file"].to_list() == ["a", "b"]
    assert events["label"].to_list() == ["NOCA", None]


def test_detection_csv_reads_events(tmp_path):
    text = "file,start,end,label,low_frequency,high_frequency\nscape.wav,0.5,2,owl,300,1200\nquiet.wav,,,,,\n"
    path = _write(tmp_path / "events.csv", text)

    events = readers.read_events(path)

    assert events["file"].to_list() == ["scape.wav", "quiet.wav"]
    assert events["label"].to_list() == ["owl", None]
    assert events["high_frequency"].to_list() == [1200.0, None]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("scape.wav,0.5,2\n", r"line 2: expected 4 fields"),
        ("scape.wav,x,2,owl\n", r"line 2: column 'start' is not a number: 'x'"),
        ("scape.wav,1,2,\n", r"line 2: the event from 1 to 2 s has no label"),
        (",1,2,owl\n", r"line 2: the audio file is empty"),
    ],
)
def test_detection_csv_malformed_row_names_line(tmp_path, row, message):
    path = _write(tmp_path / "events.csv", "file,start,end,label\n" + row)

    with pytest.raises(MetadataError, match=message):
        readers.read_detection_csv(path)


def test_detection_csv_empty_table_raises(tmp_path):
    path = _write(tmp_path / "events.csv", "file,start,end,label\n")

    with pytest.raises(MetadataError, match="events.csv has no rows"):
        readers.read_detection_csv(path)


def test_unknown_format_names_suffixes(tmp_path):
    path = _write(tmp_path / "events.xml", "<events/>")

    with pytest.raises(MetadataError, match=r"unsupported annotation format '.xml'"):
        readers.read_events(path)


# Written manifests load through the manifest reader.


def test_written_manifest_loads_with_manifest_settings(tmp_path):
    for name in ("a.wav", "b.wav"):
        soundfile.write(tmp_path / name, np.zeros(3200, np.float32), 32_000)
    lines = [
        {"id": "1", "gen": "Turdus", "sp": "merula", "also": ["Parusmajor"], "q": "A", "length": "0:01"},
        {"id": "2", "gen": "Parus", "sp": "major", "also": [], "q": "B", "length": "0:01"},
    ]
    frame = readers.read_xeno_canto(
        _write(tmp_path / "page.json", _xeno_canto_page(lines)), file_pattern="{id}", split="train"
    )
    frame = frame.with_columns(pl.Series("file", ["a.wav", "b.wav"]))
    readers.write_manifest(frame, tmp_path / "manifest.csv")
    settings = config_lib.from_dict({**readers.MANIFEST_SETTINGS, "data.manifests": ["manifest.csv"]})

    report = audio.read_manifest(settings.data, tmp_path)

    assert report.recordings["label"].to_list() == ["Turdus merula", "Parus major"]
    assert report.recordings["split"].to_list() == ["train", "train"]
    assert report.recordings["secondary"].to_list() == ["Parusmajor", ""]
    assert report.recordings["quality"].to_list() == ["A", "B"]
