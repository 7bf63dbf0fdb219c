"""Named components of the recipe and the config changes each level makes.

A study's factors name these components (or a dotted config path). Each
level is a set of config overrides; the first level listed in a study is its
reference level.
"""

from __future__ import annotations

from typing import Any

Overrides = dict[str, Any]

COMPONENTS: dict[str, dict[str, Overrides]] = {
    "mixup": {
        "off": {"mixup.max_sources": 1},
        # Classic mixup of two windows with Dirichlet(1, 1) gains.
        "pairwise": {"mixup.max_sources": 2, "mixup.fixed_sources": True},
        # Generalized mixup: up to 5 windows, E[N] = 1 + 4 * 0.5 = 3.
        "generalized": {
            "mixup.max_sources": 5,
            "mixup.fixed_sources": False,
            "mixup.alpha": 1.0,
            "mixup.beta": 1.0,
        },
    },
    "mixup_labels": {
        "union": {"mixup.label_mode": "union"},
        "weighted": {"mixup.label_mode": "weighted"},
    },
    "source_loss": {
        "off": {"source_loss.enabled": False},
        "on": {"source_loss.enabled": True},
    },
    "prototype": {
        "off": {"prototype.enabled": False, "distillation.enabled": False},
        "on": {"prototype.enabled": True, "distillation.enabled": False},
    },
    # The prototype head together with self-distillation from it, since
    # distillation needs its teacher.
    "prototype_distillation": {
        "off": {"prototype.enabled": False, "distillation.enabled": False},
        "on": {"prototype.enabled": True, "distillation.enabled": True},
    },
    "distillation": {
        "off": {"distillation.enabled": False},
        "on": {"distillation.enabled": True},
    },
    "window": {
        "random": {"window.selection": "random"},
        "peak": {"window.selection": "peak"},
    },
    "label_loss": {
        "softmax": {"labels.loss": "softmax"},
        "sigmoid": {"labels.loss": "sigmoid"},
    },
    "secondary_labels": {
        "positive": {"labels.secondary": "positive"},
        "ignore": {"labels.secondary": "ignore"},
        "smooth": {"labels.secondary": "smooth"},
    },
    "backbone": {
        "tiny": {"model.backbone": "tiny"},
        "small": {"model.backbone": "small"},
        "efficientnet_b0": {"model.backbone": "efficientnet_b0"},
        "efficientnet_b3": {"model.backbone": "efficientnet_b3"},
        "perch2_full": {"model.backbone": "perch2_full"},
    },
    # The training components of the two recipes in ablations/, without their
    # backbone, data and schedule, so that a study can cross the recipe with
    # those. tests/test_recipes.py checks that these match the recipe files.
    "recipe": {
        "perch1_like": {
            "mixup.max_sources": 2,
            "mixup.fixed_sources": True,
            "mixup.alpha": 1.0,
            "mixup.beta": 1.0,
            "mixup.label_mode": "union",
            "prototype.enabled": False,
            "prototype.prototypes_per_class": 4,
            "distillation.enabled": False,
            "source_loss.enabled": False,
            "source_loss.rank": 512,
            "labels.loss": "sigmoid",
            "window.selection": "peak",
        },
        "perch2": {
            "mixup.max_sources": 5,
            "mixup.fixed_sources": False,
            "mixup.alpha": 1.0,
            "mixup.beta": 1.0,
            "mixup.label_mode": "union",
            "prototype.enabled": True,
            "prototype.prototypes_per_class": 4,
            "distillation.enabled": True,
            "source_loss.enabled": True,
            "source_loss.rank": 512,
            "labels.loss": "softmax",
            "window.selection": "random",
        },
    },
}
