"""Training: the loop, checkpoint/resume (run files through :mod:`bnnrepro.runs`)."""
from .checkpoint import load_model, load_trained
from .loop import fit
from . import lm  # noqa: F401 (registers the language-model loop with the training loop)

__all__ = ["fit", "load_model", "load_trained"]
