"""Models and their training / checkpoint cache."""
from .cnn import MODELS, SmallCNN, build_model
from .train import (DEFAULT_CACHE_DIR, Progress, TrainResult, checkpoint_path, get_model, load_checkpoint,
                    load_user_model, save_checkpoint, train_model)
from . import oneclass  # noqa: F401  (registers the one-class models)

__all__ = ["MODELS", "SmallCNN", "build_model", "DEFAULT_CACHE_DIR", "Progress", "TrainResult", "checkpoint_path",
           "get_model", "load_checkpoint", "load_user_model", "save_checkpoint", "train_model"]
