"""Data: ID datasets, OOD recipes and the Benchmark that bundles them."""
from .benchmark import Benchmark, Split, build_benchmark, split_indices
from .datasets import DATASETS, DatasetInfo, LoadedData, data_root, list_datasets, load_dataset, register_dataset
from .registry import (DEFAULT_OOD_SETS, OOD_SETS, SURVEY_PAIRS, _register_natural, make_ood_set, ood_set_available,
                       register_ood_set, survey_sets)
from .sources import DataError

_register_natural()  # natural OOD sets (other datasets' test images, folders) after the defaults

__all__ = [
    "Benchmark", "Split", "build_benchmark", "split_indices", "DATASETS", "DatasetInfo", "LoadedData", "data_root",
    "list_datasets", "load_dataset", "register_dataset", "DEFAULT_OOD_SETS", "OOD_SETS", "SURVEY_PAIRS",
    "make_ood_set", "ood_set_available", "register_ood_set", "survey_sets", "DataError",
]
