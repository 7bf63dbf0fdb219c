"""Ablation studies of bioacoustic training recipes: trainer, study runner and tracking."""

__version__ = "0.1.0"
