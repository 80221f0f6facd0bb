"""Data: ID datasets, OOD recipes and the Benchmark that bundles them."""
from .benchmark import Benchmark, Split, build_benchmark, split_indices
from .datasets import DATASETS, register_dataset
from .registry import DEFAULT_OOD_SETS, OOD_SETS, make_ood_set, register_ood_set

__all__ = [
    "Benchmark", "Split", "build_benchmark", "split_indices", "DATASETS", "register_dataset",
    "DEFAULT_OOD_SETS", "OOD_SETS", "make_ood_set", "register_ood_set",
]
