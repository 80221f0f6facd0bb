"""ood_core: the library behind OOD Explorer. No Streamlit in here; usable from a notebook or the CLI."""
from .spec import Spec, TrainConfig

__all__ = ["Spec", "TrainConfig"]
__version__ = "0.1.0"
