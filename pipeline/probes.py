"""Few-shot probes on frozen embeddings: logistic regression and class prototypes.

A probe is fit on k training recordings per class, and the draw of those
recordings is repeated with different seeds. Each probe is scored on
held-out recordings by ROC AUC, cmAP and top-1 accuracy, and the mean and
standard deviation over draws are reported. This follows the linear and
prototypical probes of BEANS and the few-shot logistic-regression probes of
Perch 2.0.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from pipeline import metrics
from pipeline.config import EvalConfig

SCORE_NAMES = ("auroc", "cmap", "top1")


@dataclasses.dataclass
class ProbeData:
    """Embeddings of the probe's training and test recordings, one row each."""

    train_embeddings: np.ndarray  # [train recordings, channels]
    train_classes: np.ndarray  # [train recordings], index into `class_names`
    test_embeddings: np.ndarray  # [test recordings, channels]
    test_classes: np.ndarray  # [test recordings], index into `class_names`
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def shots_name(shots: int) -> str:
    """Return the metric name of a shot count: `k4`, or `kall` for 0."""
    return "kall" if shots == 0 else f"k{shots}"


def draw_shots(classes: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
    """Return the sorted indices of `shots` examples of each class, drawn without replacement.

    A class with fewer examples keeps all of them, and `shots = 0` keeps
    every example.
    """
    if shots == 0:
        return np.arange(len(classes))
    chosen = []
    for label in np.unique(classes):
        members = np.flatnonzero(classes == label)
        count = min(shots, len(members))
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen))


def linear_probe_scores(
    train_embeddings: np.ndarray,
    train_classes: np.ndarray,
    test_embeddings: np.ndarray,
    num_classes: int,
    regularization: float,
) -> np.ndarray:
    """Fit a multinomial logistic regression on standardized embeddings; return test probabilities.

    Returns [test, classes]. Every class needs at least one training example.
    """
    # Newton-CG reached the optimum in about 12 steps on 32-class probes of
    # 128-channel embeddings, where L-BFGS needed about 370 iterations and
    # three times the CPU time.
    classifier = LogisticRegression(C=regularization, solver="newton-cg", max_iter=200)
    probe = make_pipeline(StandardScaler(), classifier)
    with warnings.catch_warnings():
        # With one shot there are as many classes as examples, which
        # scikit-learn warns may mean regression targets; here it is by design.
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        probe.fit(train_embeddings, train_classes)
    probabilities = probe.predict_proba(test_embeddings)  # [test, classes seen in training]
    scores = np.zeros((len(test_embeddings), num_classes))
    scores[:, probe.classes_] = probabilities
    return scores


def prototype_scores(
    train_embeddings: np.ndarray,
    train_classes: np.ndarray,
    test_embeddings: np.ndarray,
    num_classes: int,
    distance: str,
) -> np.ndarray:
    """Score each test embedding against the mean embedding of each class.

    With "cosine" the score is the cosine similarity to the class mean of
    unit-normalized embeddings. With "euclidean" it is the negative
    Euclidean distance to the class mean. Returns [test, classes].
    """
    if distance == "cosine":
        train_embeddings = _unit_rows(train_embeddings)
        test_embeddings = _unit_rows(test_embeddings)
    prototypes = np.zeros((num_classes, train_embeddings.shape[1]))  # [classes, channels]
    for label in range(num_classes):
        prototypes[label] = train_embeddings[train_classes == label].mean(axis=0)
    if distance == "cosine":
        return test_embeddings @ _unit_rows(prototypes).T
    differences = test_embeddings[:, None, :] - prototypes[None, :, :]  # [test, classes, channels]
    return -np.linalg.norm(differences, axis=-1)


def _unit_rows(values: np.ndarray) -> np.ndarray:
    return values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)


# fn(train embeddings, train classes, test embeddings, number of classes) -> [test, classes]
Probe = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


def make_probes(settings: EvalConfig) -> dict[str, Probe]:
    """Return the probes of the transfer task by metric name."""
    return {
        "linear": functools.partial(linear_probe_scores, regularization=settings.probe_regularization),
        "prototype": functools.partial(prototype_scores, distance=settings.prototype_distance),
    }


def draws_needed(classes: np.ndarray, shots: int, draws: int) -> int:
    """Return how many draws differ: one when every class keeps all its examples."""
    largest_class = int(np.bincount(classes).max())
    return 1 if shots == 0 or shots >= largest_class else draws


def evaluate_probes(data: ProbeData, settings: EvalConfig) -> tuple[dict[str, float], pl.DataFrame]:
    """Fit and score every probe at every shot count of `settings`.

    Returns metrics named `<probe>_k<shots>_<score>` with `_std` twins, and
    a per-class table of scores averaged over draws.
    """
    # Probe matrices are small. On a busy 2-core machine, two BLAS threads
    # made one fit about 40 times slower than one thread (14.6 s vs 0.35 s).
    with threadpool_limits(limits=1):
        return _evaluate_probes(data, settings)


def _evaluate_probes(data: ProbeData, settings: EvalConfig) -> tuple[dict[str, float], pl.DataFrame]:
    probes = make_probes(settings)
    # Chosen training indices -> probe name -> (scores, per-class table). A
    # shot count that keeps every example repeats the fit of `shots = 0`.
    fitted: dict[tuple[int, ...], dict[str, tuple[dict[str, float], pl.DataFrame]]] = {}
    scores: dict[str, float] = {}
    tables = []
    for shots in settings.transfer_shots:
        draws = [
            draw_shots(data.train_classes, shots, np.random.default_rng([settings.seed, shots, draw]))
            for draw in range(draws_needed(data.train_classes, shots, settings.transfer_draws))
        ]
        for chosen in draws:
            key = tuple(chosen.tolist())
            if key not in fitted:
                fitted[key] = _fit_and_score(data, chosen, probes)
        mean_shots = np.mean(
            [np.bincount(data.train_classes[chosen], minlength=data.num_classes) for chosen in draws], axis=0
        )
        scores[f"{shots_name(shots)}_shots"] = float(mean_shots.mean())
        for name in probes:
            results = [fitted[tuple(chosen.tolist())][name] for chosen in draws]
            for score in SCORE_NAMES:
                mean, spread = metrics.mean_and_spread([summary[score] for summary, _ in results])
                scores[f"{name}_{shots_name(shots)}_{score}"] = mean
                scores[f"{name}_{shots_name(shots)}_{score}_std"] = spread
            tables.append(_average_tables([table for _, table in results], name, shots, mean_shots))
    return scores, pl.concat(tables)


def _fit_and_score(
    data: ProbeData, chosen: np.ndarray, probes: dict[str, Probe]
) -> dict[str, tuple[dict[str, float], pl.DataFrame]]:
    """Fit every probe on the chosen training examples and score it on all test examples."""
    test_labels = np.eye(data.num_classes)[data.test_classes]  # [test, classes]
    results = {}
    for name, probe in probes.items():
        probe_scores = probe(
            data.train_embeddings[chosen], data.train_classes[chosen], data.test_embeddings, data.num_classes
        )
        results[name] = metrics.classification_report(probe_scores, test_labels, data.class_names)
    return results


def _average_tables(
    tables: list[pl.DataFrame], probe: str, shots: int, mean_shots: np.ndarray
) -> pl.DataFrame:
    """Average per-class tables of several draws into one, labelled with the probe and shot count."""
    combined = pl.concat([table.with_row_index("position") for table in tables])
    averaged = (
        combined.group_by("position", maintain_order=True)
        .agg(
            pl.col("class").first(),
            pl.col("positives").first().alias("test_recordings"),
            pl.col("average_precision").mean(),
            pl.col("auroc").mean(),
        )
        .sort("position")
        .drop("position")
    )
    return averaged.select(
        pl.lit(probe).alias("probe"),
        pl.lit(shots).alias("shots"),
        "class",
        pl.Series("train_recordings", mean_shots),
        "test_recordings",
        "average_precision",
        "auroc",
    )
