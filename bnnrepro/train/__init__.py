"""Training: the loop, run directories, checkpoints and resume."""
from .checkpoint import CheckpointError, load_model
from .loop import TrainingDiverged, fit

__all__ = ["CheckpointError", "TrainingDiverged", "fit", "load_model"]
