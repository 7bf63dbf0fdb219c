"""Typed configuration of one training run, built from nested dictionaries.

Every component of the Perch 2.0 recipe is a field here, and a study varies
these fields. A config is a tree of frozen dataclasses, so it is hashable,
printable and serialisable, and a dotted path such as ``mixup.max_sources``
names each leaf. Values that Perch 2.0 does not publish are options with the
defaults documented next to them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Any

from pipeline import presets


class ConfigError(ValueError):
    """A configuration value or combination that cannot be trained."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Location of the recordings and the manifest columns that describe them."""

    # Folder with the audio files, flat or one folder per class. A relative
    # path is resolved against the folder of the study file.
    root: str = "../shared/data/insectset32"
    # Manifest files (CSV or Parquet) relative to `root`. Rows of several
    # manifests are concatenated.
    manifests: tuple[str, ...] = ("Cicadidae.csv", "Orthoptera.csv")
    file_column: str = "file_name"
    label_column: str = "species"
    split_column: str = "data_set"
    # Column naming the collection a recording came from. When empty, the
    # stem of the manifest file is the source.
    source_column: str = ""
    # Column with secondary (background) labels, separated by spaces or
    # semicolons. Empty means the manifest has none.
    secondary_column: str = ""
    train_split: str = "train"
    eval_split: str = "test"
    # Decoded audio is cached here. Empty means `<runs folder>/cache`.
    cache_dir: str = ""


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """Sample rate and window length of the model input."""

    sample_rate_hz: int = 32_000
    window_seconds: float = 5.0

    @property
    def window_samples(self) -> int:
        return int(round(self.sample_rate_hz * self.window_seconds))


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
    """Log-mel frontend. Defaults follow the Perch 2.0 reference frontend."""

    frame_length: int = 640  # Hann window, 20 ms at 32 kHz
    hop_length: int = 320  # 10 ms at 32 kHz
    fft_size: int = 1024
    mel_bins: int = 128
    min_frequency_hz: float = 60.0
    max_frequency_hz: float = 16_000.0
    # Output is `log_scale * log(max(magnitude, log_floor))`. The reference
    # code uses a floor of 1e-2; other descriptions give 1e-5.
    log_floor: float = 1e-2
    log_scale: float = 0.1


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Backbone preset. See `pipeline.models.PRESETS` for the choices."""

    backbone: str = "tiny"
    dropout_rate: float = 0.0
    # Weight of the old value in batch norm's running statistics. With 0.99
    # a run of a few hundred steps keeps a large share of the initial
    # statistics, and inference collapses onto one class.
    batch_norm_momentum: float = 0.9


@dataclasses.dataclass(frozen=True)
class MixupConfig:
    """Generalized multi-source mixup.

    The number of mixed windows is N = 1 + BetaBinomial(max_sources - 1,
    alpha, beta); gains come from a symmetric Dirichlet; the mix is
    sum(w_i x_i) / sqrt(sum(w_i^2)). `max_sources = 1` turns mixup off, and
    `fixed_sources = true` with `max_sources = 2` is classic pairwise mixup.
    """

    max_sources: int = 1
    alpha: float = 1.0
    beta: float = 1.0
    # When true, every example mixes exactly `max_sources` windows.
    fixed_sources: bool = False
    dirichlet_concentration: float = 1.0
    # "union": elementwise max of the mixed labels; "weighted": labels
    # weighted by the normalised gains.
    label_mode: str = "union"


@dataclasses.dataclass(frozen=True)
class SourceLossConfig:
    """Self-supervised source prediction: which recording a window came from."""

    enabled: bool = False
    weight: float = 1.0
    # Rank of the low-rank projection before the per-recording logits.
    rank: int = 512


@dataclasses.dataclass(frozen=True)
class PrototypeConfig:
    """Prototype-learning classifier on the spatial embedding."""

    enabled: bool = False
    prototypes_per_class: int = 4
    orthogonality_weight: float = 1.0
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class DistillationConfig:
    """Self-distillation from the prototype head into the linear head."""

    enabled: bool = False
    weight: float = 1.0
    temperature: float = 1.0
    # Training step at which distillation starts. Perch 2.0 trains about
    # 300k of 700k steps without it, so the default is 3/7 of the run
    # when this is negative.
    start_step: int = -1


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """Classification loss and the handling of secondary labels."""

    # "softmax": cross-entropy against 1/k on each of k positives;
    # "sigmoid": binary cross-entropy per class.
    loss: str = "softmax"
    # "positive", "ignore" (masked out of the loss) or "smooth".
    secondary: str = "ignore"
    # Target value of a secondary label when `secondary = "smooth"`.
    secondary_target: float = 0.3


@dataclasses.dataclass(frozen=True)
class WindowConfig:
    """Window selection: the rule that cuts a training window from a recording."""

    # "random" offset, or "peak": centred on an energy peak picked by
    # `pipeline.data.energy_peaks`.
    selection: str = "random"
    # Number of loudest peaks a peak window is drawn from, uniformly.
    peaks_per_recording: int = 5


@dataclasses.dataclass(frozen=True)
class SubsetConfig:
    """Training-set filter: the recordings a run trains on. Evaluation data never changes.

    The filters apply in field order, and an empty filter keeps every row.
    """

    # Keep recordings from these sources (the manifest stem by default).
    sources: tuple[str, ...] = ()
    # Keep rows whose manifest column `column` (a taxon, a site) has one of `values`.
    column: str = ""
    values: tuple[str, ...] = ()
    # Keep recordings whose primary label is one of these classes.
    classes: tuple[str, ...] = ()
    # Keep this share of each class's recordings (at least one), drawn with
    # the run's seed.
    fraction: float = 1.0
    # Drop classes left with fewer training recordings than this.
    min_recordings_per_class: int = 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the schedule of the training loop."""

    steps: int = 600
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    gradient_clip_norm: float = 5.0
    log_every: int = 25
    # Threads that read and cut windows.
    data_threads: int = 1


# Names of the evaluation tasks, kept here so that a study file is checked
# without importing jax; `pipeline.evaluation.TASKS` must register the same.
EVAL_TASKS = ("test", "transfer", "detection")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Settings of the evaluation tasks: windows, probes and soundscapes."""

    # Windows per recording, evenly spaced over its length.
    max_windows_per_recording: int = 6
    batch_size: int = 32
    # "mean" or "max" of window logits gives a recording's score.
    recording_pooling: str = "mean"
    # Evaluation tasks run after training, from `EVAL_TASKS`. "test" scores
    # held-out recordings of the training classes, "transfer" fits few-shot
    # probes on frozen embeddings, and "detection" scores windows of
    # soundscapes. An empty list skips evaluation.
    tasks: tuple[str, ...] = ("test", "transfer", "detection")
    # Seed of the probe draws and of the synthetic soundscapes. It is
    # separate from the run's seed, so every trial of a study is scored on
    # the same draws and soundscapes.
    seed: int = 0

    # Few-shot transfer. Each probe example is a recording, embedded as the
    # mean embedding of up to this many evenly spaced windows.
    transfer_windows_per_recording: int = 1
    # Training recordings per class of each probe, where 0 means all of
    # them. A class with fewer recordings than a shot count uses all it has.
    transfer_shots: tuple[int, ...] = (1, 4, 8, 16, 0)
    # Seeded draws of the probe's training recordings per shot count.
    transfer_draws: int = 5
    # Inverse L2 strength (scikit-learn's C) of the logistic-regression probe.
    probe_regularization: float = 1.0
    # Score of the prototypical probe: "cosine" similarity or "euclidean"
    # (negative distance) to each class-mean embedding.
    prototype_distance: str = "cosine"

    # Detection. Annotations of real soundscapes: a CSV (file, start, end,
    # label), a BEANS detection JSONL, a Raven selection table or a folder
    # of them. Empty means soundscapes synthesized from held-out test clips.
    # A relative path is resolved against the working directory.
    detection_annotations: str = ""
    # Folder of the soundscape audio; empty means the annotations' folder.
    detection_audio_root: str = ""
    # Label column of Raven selection tables.
    detection_label_column: str = "Annotation"
    # Window hop over a soundscape in seconds. Windows are
    # `audio.window_seconds` long.
    detection_hop_seconds: float = 5.0
    # An event labels a window when they overlap by at least this many
    # seconds, or by the whole event when it is shorter.
    detection_min_overlap_seconds: float = 0.5
    # Synthetic soundscapes: count, length, events in each, and the range of
    # each event's signal-to-noise ratio over the background noise in dB.
    detection_soundscapes: int = 4
    detection_soundscape_seconds: float = 60.0
    detection_events_per_soundscape: int = 12
    detection_min_snr_db: float = 0.0
    detection_max_snr_db: float = 20.0


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that determines one training run."""

    seed: int = 0
    data: DataConfig = DataConfig()
    audio: AudioConfig = AudioConfig()
    frontend: FrontendConfig = FrontendConfig()
    model: ModelConfig = ModelConfig()
    mixup: MixupConfig = MixupConfig()
    source_loss: SourceLossConfig = SourceLossConfig()
    prototype: PrototypeConfig = PrototypeConfig()
    distillation: DistillationConfig = DistillationConfig()
    labels: LabelConfig = LabelConfig()
    window: WindowConfig = WindowConfig()
    subset: SubsetConfig = SubsetConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


_CHOICES = {
    "mixup.label_mode": ("union", "weighted"),
    "labels.loss": ("softmax", "sigmoid"),
    "labels.secondary": ("positive", "ignore", "smooth"),
    "window.selection": ("random", "peak"),
    "eval.recording_pooling": ("mean", "max"),
    "eval.prototype_distance": ("cosine", "euclidean"),
}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Convert a TOML or JSON value to the field's type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}.")
        (item_type, _) = typing.get_args(annotation)
        return tuple(_coerce(f"{path}[{i}]", v, item_type) for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}.")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}.")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}.")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}.")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} at {path}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = _field_types(cls)
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config field {where}{unknown[0]}; "
            f"valid fields{' of ' + prefix if prefix else ''}: {', '.join(sorted(known))}."
        )
    kwargs = {}
    for name, value in values.items():
        path = f"{prefix}.{name}" if prefix else name
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a table of fields, got {value!r}.")
            kwargs[name] = _build(annotation, value, path)
        else:
            kwargs[name] = _coerce(path, value, annotation)
    return cls(**kwargs)


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Turn {"mixup.max_sources": 2} into {"mixup": {"max_sources": 2}}."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part} is a value, not a table.")
        node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge two nested dictionaries; values of `override` win."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a Config from nested or dotted-key dictionaries."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and "." not in key:
            nested = merge(nested, {key: value})
        else:
            nested = merge(nested, nest({key: value}))
    config = _build(Config, nested, "")
    validate(config)
    return config


def to_dict(config: Config) -> dict[str, Any]:
    """Return the config as plain nested dictionaries and lists."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Turn nested dictionaries into dotted keys."""
    flat = {}
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat


def config_hash(config: Config) -> str:
    """Return a short, stable hash of everything that determines a run."""
    text = json.dumps(to_dict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def get_path(config: Config, path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        node = getattr(node, part)
    return node


def validate(config: Config) -> None:
    """Raise ConfigError for values or combinations that cannot be trained."""
    for path, allowed in _CHOICES.items():
        value = get_path(config, path)
        if value not in allowed:
            raise ConfigError(f"{path}: invalid value {value!r}; expected one of {', '.join(allowed)}.")

    mixup = config.mixup
    if mixup.max_sources < 1:
        raise ConfigError(f"mixup.max_sources: must be at least 1 (1 turns mixup off), got {mixup.max_sources}.")
    if mixup.alpha <= 0 or mixup.beta <= 0:
        raise ConfigError(f"mixup.alpha and mixup.beta: must be positive, got {mixup.alpha} and {mixup.beta}.")
    if mixup.dirichlet_concentration <= 0:
        raise ConfigError(
            f"mixup.dirichlet_concentration: must be positive, got {mixup.dirichlet_concentration}."
        )
    _validate_heads(config)
    _validate_data_components(config)
    if config.train.steps < 1 or config.train.batch_size < 1:
        raise ConfigError(
            f"train.steps and train.batch_size: must be positive, got {config.train.steps} "
            f"and {config.train.batch_size}."
        )
    if not config.train.learning_rate > 0:
        raise ConfigError(f"train.learning_rate: must be positive, got {config.train.learning_rate}.")
    if config.train.warmup_steps < 0 or config.train.weight_decay < 0 or not config.train.gradient_clip_norm > 0:
        raise ConfigError(
            f"train.warmup_steps and train.weight_decay must be zero or positive and train.gradient_clip_norm "
            f"positive, got {config.train.warmup_steps}, {config.train.weight_decay} and "
            f"{config.train.gradient_clip_norm}."
        )
    if config.train.batch_size < mixup.max_sources:
        raise ConfigError(
            f"train.batch_size ({config.train.batch_size}) must be at least mixup.max_sources "
            f"({mixup.max_sources}), because mixup draws its sources from the batch."
        )
    if config.audio.sample_rate_hz < 2 * config.frontend.max_frequency_hz:
        raise ConfigError(
            f"frontend.max_frequency_hz ({config.frontend.max_frequency_hz}) exceeds the Nyquist "
            f"frequency of audio.sample_rate_hz ({config.audio.sample_rate_hz})."
        )
    if config.model.backbone not in presets.PRESETS:
        raise ConfigError(
            f"model.backbone: unknown preset {config.model.backbone!r}; "
            f"expected one of {', '.join(presets.PRESETS)}."
        )
    validate_eval(config)


def validate_eval(config: Config) -> None:
    """Raise ConfigError for evaluation settings that cannot be run."""
    settings = config.eval
    for task in settings.tasks:
        if task not in EVAL_TASKS:
            raise ConfigError(f"eval.tasks: unknown task {task!r}; valid tasks: {', '.join(EVAL_TASKS)}.")
    if len(set(settings.tasks)) != len(settings.tasks):
        raise ConfigError(f"eval.tasks: {list(settings.tasks)} names a task twice; list each task once.")

    counts = {
        "eval.max_windows_per_recording": settings.max_windows_per_recording,
        "eval.batch_size": settings.batch_size,
        "eval.transfer_windows_per_recording": settings.transfer_windows_per_recording,
        "eval.transfer_draws": settings.transfer_draws,
        "eval.detection_soundscapes": settings.detection_soundscapes,
        "eval.detection_events_per_soundscape": settings.detection_events_per_soundscape,
    }
    for path, value in counts.items():
        if value < 1:
            raise ConfigError(f"{path}: must be at least 1, got {value}.")
    if not settings.transfer_shots or min(settings.transfer_shots) < 0:
        raise ConfigError(
            f"eval.transfer_shots: expected shot counts of 0 (all recordings) or more, got "
            f"{list(settings.transfer_shots)}."
        )
    if len(set(settings.transfer_shots)) != len(settings.transfer_shots):
        raise ConfigError(f"eval.transfer_shots: {list(settings.transfer_shots)} names a shot count twice.")
    if settings.probe_regularization <= 0:
        raise ConfigError(f"eval.probe_regularization: must be positive, got {settings.probe_regularization}.")

    if settings.detection_hop_seconds <= 0 or settings.detection_min_overlap_seconds <= 0:
        raise ConfigError(
            f"eval.detection_hop_seconds and eval.detection_min_overlap_seconds: must be positive, got "
            f"{settings.detection_hop_seconds} and {settings.detection_min_overlap_seconds}."
        )
    if settings.detection_soundscape_seconds < config.audio.window_seconds:
        raise ConfigError(
            f"eval.detection_soundscape_seconds ({settings.detection_soundscape_seconds}) is shorter than "
            f"one window (audio.window_seconds = {config.audio.window_seconds}); make it longer."
        )
    if settings.detection_min_snr_db > settings.detection_max_snr_db:
        raise ConfigError(
            f"eval.detection_min_snr_db ({settings.detection_min_snr_db}) exceeds "
            f"eval.detection_max_snr_db ({settings.detection_max_snr_db})."
        )


def distillation_start(config: Config) -> int:
    """Return the step at which distillation starts."""
    if config.distillation.start_step >= 0:
        return config.distillation.start_step
    return (config.train.steps * 3) // 7


def _validate_heads(config: Config) -> None:
    """Check the prototype head, distillation and source-prediction settings."""
    if config.distillation.enabled and not config.prototype.enabled:
        raise ConfigError(
            "distillation.enabled = true needs prototype.enabled = true: the prototype head is the "
            "teacher. Turn the prototype head on or distillation off."
        )
    for path in (
        "source_loss.weight",
        "prototype.weight",
        "prototype.orthogonality_weight",
        "distillation.weight",
    ):
        if get_path(config, path) < 0:
            raise ConfigError(f"{path}: must be zero or positive, got {get_path(config, path)}.")
    if not 0.0 <= config.model.batch_norm_momentum < 1.0:
        raise ConfigError(f"model.batch_norm_momentum: must be in [0, 1), got {config.model.batch_norm_momentum}.")
    if config.source_loss.rank < 1:
        raise ConfigError(f"source_loss.rank: must be at least 1, got {config.source_loss.rank}.")
    if config.prototype.prototypes_per_class < 1:
        raise ConfigError(
            f"prototype.prototypes_per_class: must be at least 1, got {config.prototype.prototypes_per_class}."
        )
    if config.distillation.temperature <= 0:
        raise ConfigError(f"distillation.temperature: must be positive, got {config.distillation.temperature}.")
    if config.distillation.enabled and config.distillation.start_step >= config.train.steps:
        raise ConfigError(
            f"distillation.start_step ({config.distillation.start_step}) is not below train.steps "
            f"({config.train.steps}), so distillation would never run. Lower distillation.start_step, "
            "set it to -1 (3/7 of the run), or turn distillation off."
        )


def _validate_data_components(config: Config) -> None:
    """Check the label, window and training-subset settings."""
    if not 0.0 <= config.labels.secondary_target <= 1.0:
        raise ConfigError(f"labels.secondary_target: must be in [0, 1], got {config.labels.secondary_target}.")
    if config.window.peaks_per_recording < 1:
        raise ConfigError(
            f"window.peaks_per_recording: must be at least 1, got {config.window.peaks_per_recording}."
        )
    subset = config.subset
    if bool(subset.column) != bool(subset.values):
        raise ConfigError(
            f"subset.column ({subset.column!r}) and subset.values ({list(subset.values)}) must be set "
            "together: name a manifest column and the values of it to keep, or leave both empty."
        )
    if not 0.0 < subset.fraction <= 1.0:
        raise ConfigError(f"subset.fraction: must be in (0, 1], got {subset.fraction}.")
    if subset.min_recordings_per_class < 1:
        raise ConfigError(
            f"subset.min_recordings_per_class: must be at least 1, got {subset.min_recordings_per_class}."
        )
