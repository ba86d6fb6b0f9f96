"""The paper's data pipeline (§2, §4.1) and the data sets it runs on.

open_dataset("synthetic" | "imagenet:ROOT" | "cifar10:ROOT" | "cifar100:ROOT" |
             "caltech101:ROOT" | "folder:ROOT" | "store:DIR") -> DataSet(classes, splits)
DataSet.stats() -> DataStats(mean_image, eigval, eigvec)        §2 mean image, §4.1 PCA
BatchLoader(split, batch_size, seed=, epoch=)                    uint8 N x 3 x 256 x 256 batches
PaperTransform(stats, Augment(crop, flip, pca, mean)).train / .center / .ten_crops
prepare_store(...) / Store(DIR)                                  the memory-mapped 256x256 store
load_rgb(path)                                                   one file, §2, or BadImageError
"""

from .images import BadImageError, DataError, load_rgb, resize_and_center_crop
from .loader import BatchLoader, epoch_order, loader_throughput
from .sources import (
    DataSet,
    DataSpec,
    cache_dir,
    open_dataset,
    parse_spec,
    synthetic_source,
)
from .folders import scan_tree
from .splits import Split, stratified_split
from .stats import IMAGENET_EIGVAL, IMAGENET_EIGVEC, DataStats, compute_stats
from .store import Store, prepare_store
from .transforms import (
    LIGHTING,
    MEAN_MODES,
    Augment,
    PaperTransform,
    average_softmax,
    pca_shift,
    ten_crop_offsets,
)

__all__ = [
    "Augment",
    "BadImageError",
    "BatchLoader",
    "DataError",
    "DataSet",
    "DataSpec",
    "DataStats",
    "IMAGENET_EIGVAL",
    "IMAGENET_EIGVEC",
    "LIGHTING",
    "MEAN_MODES",
    "PaperTransform",
    "Split",
    "Store",
    "average_softmax",
    "cache_dir",
    "compute_stats",
    "epoch_order",
    "load_rgb",
    "loader_throughput",
    "open_dataset",
    "parse_spec",
    "pca_shift",
    "prepare_store",
    "resize_and_center_crop",
    "scan_tree",
    "stratified_split",
    "synthetic_source",
    "ten_crop_offsets",
]
