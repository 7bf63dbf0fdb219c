"""Manifest reading, audio decoding and the decoded-audio cache.

A dataset is a folder of audio files plus one or more manifests (CSV or
Parquet) with a row per recording. Rows whose file is absent and files
without a row are reported and left out. The rest are decoded once with
soundfile, mixed down to mono and resampled with soxr. They are stored in a
cache that every trial of a study memory-maps instead of decoding again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
import urllib.parse

import filelock
import numpy as np
import polars as pl
import soundfile
import soxr

from pipeline.config import ConfigError, DataConfig

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")
_CACHE_VERSION = 1


@dataclasses.dataclass
class ManifestReport:
    """Recordings found, plus what could not be matched."""

    # One row per usable recording: path, label, split, source, secondary,
    # and every other manifest column.
    recordings: pl.DataFrame
    # Manifest rows whose audio file does not exist under the root.
    missing_files: list[str]
    # Audio files under the root that no manifest row names.
    unlisted_files: list[str]

    def summary(self) -> str:
        lines = [f"{self.recordings.height} recordings with a manifest row and a file."]
        if self.missing_files:
            lines.append(
                f"{len(self.missing_files)} manifest rows have no audio file and are skipped: "
                + ", ".join(self.missing_files)
            )
        if self.unlisted_files:
            lines.append(
                f"{len(self.unlisted_files)} audio files have no manifest row and are skipped: "
                + ", ".join(self.unlisted_files)
            )
        return "\n".join(lines)


def _read_table(path: pathlib.Path) -> pl.DataFrame:
    if not path.exists():
        raise ConfigError(f"manifest not found: {path}. Check data.root and data.manifests.")
    if path.suffix.lower() == ".parquet":
        return pl.read_parquet(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        separator = "\t" if path.suffix.lower() == ".tsv" else ","
        try:
            return pl.read_csv(path, separator=separator, infer_schema=False)
        except pl.exceptions.NoDataError as error:
            raise ConfigError(f"manifest {path} is empty; it needs a header and one row per recording.") from error
    raise ConfigError(f"manifest {path}: unsupported format {path.suffix!r}; use .csv, .tsv or .parquet.")


def _index_audio_files(root: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """Map each audio file's name (and URL-decoded name) to its paths under root."""
    index: dict[str, list[pathlib.Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file():
            index.setdefault(path.name, []).append(path)
    return index


def _resolve(name: str, label: str, root: pathlib.Path, index: dict[str, list[pathlib.Path]]) -> pathlib.Path | None:
    """Find a manifest file name as a relative path, in its class folder, or anywhere."""
    for candidate in (root / name, root / label / name):
        if candidate.is_file():
            return candidate
    basename = pathlib.PurePath(name).name
    for key in (basename, urllib.parse.unquote(basename)):
        matches = index.get(key, [])
        if len(matches) == 1:
            return matches[0]
        in_label_folder = [path for path in matches if path.parent.name == label]
        if len(in_label_folder) == 1:
            return in_label_folder[0]
    return None


def read_manifest(config: DataConfig, root: pathlib.Path) -> ManifestReport:
    """Read every manifest, match rows to files, and report what is unmatched."""
    if not root.is_dir():
        raise ConfigError(f"data.root is not a folder: {root}. Point it at the folder with the audio files.")
    if not config.manifests:
        raise ConfigError("data.manifests is empty; name at least one CSV or Parquet manifest.")

    frames = []
    for manifest in config.manifests:
        table = _read_table(root / manifest)
        required = [config.file_column, config.label_column, config.split_column]
        if config.source_column:
            required.append(config.source_column)
        absent = [column for column in required if column not in table.columns]
        if absent:
            raise ConfigError(
                f"manifest {root / manifest} has no column {absent[0]!r}; its columns are "
                f"{', '.join(table.columns)}. Set data.file_column, data.label_column, "
                "data.split_column or data.source_column to match."
            )
        if not config.source_column:
            table = table.with_columns(pl.lit(pathlib.Path(manifest).stem).alias("source"))
        frames.append(table)
    table = pl.concat(frames, how="diagonal_relaxed")
    if table.height == 0:
        raise ConfigError(f"the manifests {', '.join(config.manifests)} have no rows.")

    index = _index_audio_files(root)
    paths, missing = [], []
    for name, label in zip(table[config.file_column], table[config.label_column]):
        path = _resolve(str(name), str(label), root, index)
        paths.append(str(path) if path else None)
        if path is None:
            missing.append(str(name))
    table = table.with_columns(pl.Series("path", paths, dtype=pl.String))
    listed = set(path for path in paths if path)
    unlisted = sorted(
        str(path.relative_to(root)) for matches in index.values() for path in matches if str(path) not in listed
    )

    recordings = table.filter(pl.col("path").is_not_null())
    recordings = recordings.with_columns(
        pl.col(config.label_column).cast(pl.String).alias("label"),
        pl.col(config.split_column).cast(pl.String).alias("split"),
        pl.col(config.source_column or "source").cast(pl.String).alias("source"),
        (
            pl.col(config.secondary_column).cast(pl.String).fill_null("")
            if config.secondary_column
            else pl.lit("")
        ).alias("secondary"),
    )
    recordings = recordings.unique(subset="path", keep="first", maintain_order=True)
    return ManifestReport(recordings, missing, unlisted)


def decode(path: str | os.PathLike, sample_rate_hz: int) -> np.ndarray:
    """Decode an audio file to mono float32 at `sample_rate_hz`.

    Raises ValueError naming the file when it cannot be decoded or is empty.
    """
    try:
        samples, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise ValueError(f"cannot decode {path}: {error}") from error
    if samples.shape[0] == 0:
        raise ValueError(f"{path} contains no audio samples")
    mono = samples.mean(axis=1)  # [samples]
    if file_rate != sample_rate_hz:
        mono = soxr.resample(mono, file_rate, sample_rate_hz, quality="HQ")
    if not np.all(np.isfinite(mono)):
        raise ValueError(f"{path} contains non-finite samples")
    return mono.astype(np.float32)


@dataclasses.dataclass
class AudioStore:
    """Decoded recordings, concatenated in one memory-mapped int16 array.

    Each recording is peak-normalised to the int16 range before storage, and
    `scales` restores its original amplitude.
    """

    samples: np.ndarray  # [total samples], int16, memory-mapped
    offsets: np.ndarray  # [recordings + 1], int64
    scales: np.ndarray  # [recordings], float32
    paths: list[str]
    sample_rate_hz: int

    def __len__(self) -> int:
        return len(self.paths)

    def length(self, index: int) -> int:
        return int(self.offsets[index + 1] - self.offsets[index])

    def segment(self, index: int, start: int, length: int) -> np.ndarray:
        """Return `length` float32 samples from `start`, zero-padded past the end."""
        begin = int(self.offsets[index])
        size = self.length(index)
        out = np.zeros(length, np.float32)
        first = max(start, 0)
        last = min(start + length, size)
        if last > first:
            chunk = self.samples[begin + first : begin + last]
            out[first - start : last - start] = chunk.astype(np.float32) * self.scales[index]
        return out

    def recording(self, index: int) -> np.ndarray:
        return self.segment(index, 0, self.length(index))


def _fingerprint(paths: list[str], sample_rate_hz: int) -> str:
    digest = hashlib.sha256(f"v{_CACHE_VERSION}:{sample_rate_hz}".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def build_store(paths: list[str], sample_rate_hz: int, cache_dir: pathlib.Path) -> tuple[AudioStore, list[str]]:
    """Decode `paths` once into the cache, or open the cache made earlier.

    Returns the store and the paths that failed to decode, which are left
    out of the store. Concurrent callers wait on a file lock, so only one
    decodes.
    """
    folder = cache_dir / _fingerprint(paths, sample_rate_hz)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(folder) + ".lock"):
        if not (folder / "index.json").exists():
            _write_store(paths, sample_rate_hz, folder)
    return open_store(folder)


def _write_store(paths: list[str], sample_rate_hz: int, folder: pathlib.Path) -> None:
    staging = pathlib.Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp"))
    kept, failed, scales, offsets = [], [], [], [0]
    with open(staging / "samples.bin", "wb") as handle:
        for path in paths:
            try:
                audio = decode(path, sample_rate_hz)
            except ValueError as error:
                log.warning("Skipping a recording: %s", error)
                failed.append(path)
                continue
            peak = float(np.max(np.abs(audio)))
            scale = peak / 32767.0 if peak > 0 else 1.0
            handle.write(np.round(audio / scale).astype(np.int16).tobytes())
            kept.append(path)
            scales.append(scale)
            offsets.append(offsets[-1] + audio.size)
    index = {
        "version": _CACHE_VERSION,
        "sample_rate_hz": sample_rate_hz,
        "paths": kept,
        "failed": failed,
        "scales": scales,
        "offsets": offsets,
    }
    (staging / "index.json").write_text(json.dumps(index))
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)


def open_store(folder: pathlib.Path) -> tuple[AudioStore, list[str]]:
    """Memory-map a cache folder written by `build_store`."""
    index = json.loads((folder / "index.json").read_text())
    total = index["offsets"][-1]
    if total:
        samples = np.memmap(folder / "samples.bin", dtype=np.int16, mode="r", shape=(total,))
    else:
        samples = np.zeros(0, np.int16)
    store = AudioStore(
        samples=samples,
        offsets=np.asarray(index["offsets"], np.int64),
        scales=np.asarray(index["scales"], np.float32),
        paths=index["paths"],
        sample_rate_hz=index["sample_rate_hz"],
    )
    return store, index["failed"]
