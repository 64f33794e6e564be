"""Training: the loop, checkpoint/resume (run files through :mod:`bnnrepro.runs`)."""
from .checkpoint import load_model, load_trained
from .loop import fit

__all__ = ["fit", "load_model", "load_trained"]
