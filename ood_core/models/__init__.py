"""Models, their training, and the verified checkpoint cache."""
from .cnn import MODELS, SmallCNN, build_model
from .train import Progress, TrainResult, train_model
from .checkpoint import (DEFAULT_CACHE_DIR, ModelLoadError, cache_status, checkpoint_path, file_lock, get_model,
                         is_cached, load_checkpoint, load_user_model, read_checkpoint, save_checkpoint)
from .loading import load_model
from . import oneclass  # noqa: F401  (registers the one-class models)

__all__ = ["MODELS", "SmallCNN", "build_model", "DEFAULT_CACHE_DIR", "ModelLoadError", "Progress", "TrainResult",
           "cache_status", "checkpoint_path", "file_lock", "get_model", "is_cached", "load_checkpoint",
           "load_model", "load_user_model", "read_checkpoint", "save_checkpoint", "train_model"]
