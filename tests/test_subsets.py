"""Training subsets by source, manifest column, class list and fraction.

Every subset changes the training recordings only: the class list and the
evaluation recordings stay those of the full dataset.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import soundfile

from pipeline import data
from pipeline.config import ConfigError, from_dict

# species -> (taxon, training recordings per source, test recordings)
SPECIES = {
    "Gryllus": ("Orthoptera", {"site_north": 4, "site_south": 2}, 1),
    "Chorthippus": ("Orthoptera", {"site_north": 2}, 1),
    "Platypleura": ("Hemiptera", {"site_south": 5}, 1),
}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """Three species in two manifests (the sources), with a taxon column."""
    root = tmp_path_factory.mktemp("subsets")
    rng = np.random.default_rng(0)
    rows: dict[str, list[dict]] = {"site_north": [], "site_south": []}
    for species, (taxon, per_source, test_count) in SPECIES.items():
        splits = [(source, "train") for source, count in per_source.items() for _ in range(count)]
        splits += [("site_north", "test")] * test_count
        for number, (source, split) in enumerate(splits):
            name = f"{species}_{number}.wav"
            soundfile.write(root / name, rng.normal(0, 0.1, 3200).astype(np.float32), 32_000)
            rows[source].append({"file_name": name, "species": species, "taxon": taxon, "data_set": split})
    for source, source_rows in rows.items():
        pl.DataFrame(source_rows).write_csv(root / f"{source}.csv")
    return root


def _dataset(root, **subset) -> data.Dataset:
    config = from_dict(
        {"data": {"root": str(root), "manifests": ["site_north.csv", "site_south.csv"]}, "subset": subset}
    )
    return data.prepare_dataset(config, root, root / "cache")


def _training_column(dataset: data.Dataset, column: str) -> list[str]:
    rows = dataset.recordings.filter(pl.col("store_index").is_in(dataset.train.tolist()))
    return rows[column].to_list()


@pytest.fixture(scope="module")
def full(synthetic_root) -> data.Dataset:
    return _dataset(synthetic_root)


@pytest.mark.parametrize(
    "subset, column, kept",
    [
        ({"sources": ["site_south"]}, "source", {"site_south"}),
        ({"column": "taxon", "values": ["Orthoptera"]}, "taxon", {"Orthoptera"}),
        ({"classes": ["Gryllus", "Platypleura"]}, "label", {"Gryllus", "Platypleura"}),
    ],
    ids=["source", "taxon_column", "class_list"],
)
def test_subset_keeps_only_selected_rows(synthetic_root, full, subset, column, kept):
    dataset = _dataset(synthetic_root, **subset)
    expected = [value for value in _training_column(full, column) if value in kept]

    assert sorted(_training_column(dataset, column)) == sorted(expected)
    assert np.array_equal(dataset.evaluation, full.evaluation)
    assert dataset.classes == full.classes


def test_min_recordings_drops_small_classes(synthetic_root, full):
    dataset = _dataset(synthetic_root, min_recordings_per_class=3)

    assert set(_training_column(dataset, "label")) == {"Gryllus", "Platypleura"}
    assert np.array_equal(dataset.evaluation, full.evaluation)


def test_fraction_is_per_class_and_seeded(synthetic_root, full):
    config = from_dict({"subset": {"fraction": 0.5}})
    rows = full.recordings.filter(pl.col("split") == "train")

    first = data.apply_subset(rows, config.subset, seed=0)
    again = data.apply_subset(rows, config.subset, seed=0)
    others = [data.apply_subset(rows, config.subset, seed=seed)["store_index"].to_list() for seed in range(1, 6)]

    # round(0.5 * n), at least 1: Gryllus 6 -> 3, Chorthippus 2 -> 1, Platypleura 5 -> 2.
    counts = dict(first.group_by("label").len().iter_rows())
    assert counts == {"Gryllus": 3, "Chorthippus": 1, "Platypleura": 2}
    assert first["store_index"].to_list() == again["store_index"].to_list()
    assert any(other != first["store_index"].to_list() for other in others)


def test_fraction_and_minimum_combine(synthetic_root):
    dataset = _dataset(synthetic_root, fraction=0.5, min_recordings_per_class=2)

    assert set(_training_column(dataset, "label")) == {"Gryllus", "Platypleura"}


@pytest.mark.parametrize(
    "subset, field, value",
    [
        ({"sources": ["site_east"]}, "subset.sources", "site_east"),
        ({"column": "taxon", "values": ["Odonata"]}, "subset.values", "Odonata"),
        ({"classes": ["Tettigonia"]}, "subset.classes", "Tettigonia"),
        ({"column": "order", "values": ["Orthoptera"]}, "subset.column", "order"),
    ],
)
def test_unknown_subset_value_names_it(synthetic_root, subset, field, value):
    with pytest.raises(ConfigError) as error:
        _dataset(synthetic_root, **subset)

    assert field in str(error.value)
    assert value in str(error.value)


def test_empty_subset_is_rejected(synthetic_root):
    with pytest.raises(ConfigError, match="training subset is empty"):
        _dataset(synthetic_root, min_recordings_per_class=10)


def test_insectset32_by_source(insect_root, audio_cache):
    def load(**subset):
        config = from_dict({"data": {"root": str(insect_root)}, "subset": subset})
        return data.prepare_dataset(config, insect_root, audio_cache)

    both = load()
    orthoptera = load(sources=["Orthoptera"])

    assert set(_training_column(orthoptera, "source")) == {"Orthoptera"}
    assert 0 < len(orthoptera.train) < len(both.train)
    assert np.array_equal(orthoptera.evaluation, both.evaluation)
    assert orthoptera.classes == both.classes
    assert orthoptera.num_sources == len(orthoptera.train)
