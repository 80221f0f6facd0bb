"""Models, their training, and the verified checkpoint cache.

Every module of this folder is imported here, so a model is one file: its nn.Module and a
`register_model(ModelEntry(...))` call at the bottom (models.registry) put it in every picker and the CLI.
"""
import importlib
import pkgutil

from .registry import MODELS, InputContract, ModelEntry, build_model, get_entry, model_title, register_model
from .cnn import SmallCNN
from .train import Progress, TrainResult, train_model
from .checkpoint import (DEFAULT_CACHE_DIR, ModelLoadError, cache_status, checkpoint_path, file_lock, get_model,
                         is_cached, load_checkpoint, load_user_model, read_checkpoint, save_checkpoint)
from .loading import load_model  # a user's model from a file, torchvision weights or a factory

for _module in pkgutil.iter_modules(__path__):  # registers every architecture (resnet, lenet, oneclass, ...)
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MODELS", "InputContract", "ModelEntry", "SmallCNN", "build_model", "get_entry", "model_title",
           "register_model", "DEFAULT_CACHE_DIR", "ModelLoadError", "Progress", "TrainResult", "cache_status",
           "checkpoint_path", "file_lock", "get_model", "is_cached", "load_checkpoint", "load_user_model",
           "read_checkpoint", "save_checkpoint", "train_model", "load_model"]
