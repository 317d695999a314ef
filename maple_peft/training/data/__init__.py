"""Data loading for MaPLe: CoOp benchmark layouts, 🤗 datasets, few-shot sampling, CLIP transforms.

Typical few-shot base-to-novel setup::

    from maple_peft.training.data import CLIPTransforms, ImageClassificationDataset, load_coop_split

    train = load_coop_split("eurosat", data_root, "train").few_shot(16, seed=1).class_subset("base")
    test = load_coop_split("eurosat", data_root, "test").class_subset("base")
    tfm = CLIPTransforms.from_processor(processor)
    train_ds = ImageClassificationDataset(train, tfm.train(), cache_decoded=True)
    test_ds = ImageClassificationDataset(test, tfm.test())
"""

from .coop import BENCHMARKS, BenchmarkSpec, get_benchmark, list_benchmarks, load_coop_split, read_classnames
from .dataset import ImageClassificationDataset
from .draw import DRAWS, TRAIN_IMAGES_FILE, TrainingDraw, draw_training_images
from .hf import (
    ImageClassificationData,
    dataset_identity,
    load_class_name_map,
    load_image_classification,
    records_from_hf_dataset,
)
from .hub_root import (
    HUB_ARCHIVES,
    HUB_DATA_REPO,
    HUB_DATA_REVISION,
    IMAGENET_HUB_DATASET,
    HubDataRoot,
    imagenet_classnames,
    load_imagenet_from_hub,
    parse_hub_root,
)
from .records import HFImageRef, ImageRecord, ImageRecords
from .registry import (
    HUB_DATASETS,
    HubDatasetSpec,
    find_hub_dataset,
    hub_dataset_for_benchmark,
    load_dataset_registry,
    split_source_of,
)
from .sampling import sample_few_shot, sample_few_shot_dassl, split_base_novel, subsample_classes
from .synthetic import SMOKE_MODEL_MARKER, make_synthetic_imagefolder, smoke_assets
from .transforms import (
    CLIP_MEAN,
    CLIP_STD,
    CLIPTestTransform,
    CLIPTrainTransform,
    CLIPTransforms,
    PatchTransform,
    PatchTransforms,
    center_crop,
    image_transforms,
    normalize,
    random_resized_crop_params,
    resize_shorter_side,
    to_rgb,
    to_tensor,
)

__all__ = [
    "BENCHMARKS",
    "DRAWS",
    "HUB_ARCHIVES",
    "HUB_DATASETS",
    "HUB_DATA_REPO",
    "HUB_DATA_REVISION",
    "IMAGENET_HUB_DATASET",
    "CLIP_MEAN",
    "CLIP_STD",
    "BenchmarkSpec",
    "CLIPTestTransform",
    "CLIPTrainTransform",
    "CLIPTransforms",
    "HFImageRef",
    "HubDataRoot",
    "HubDatasetSpec",
    "PatchTransform",
    "TRAIN_IMAGES_FILE",
    "TrainingDraw",
    "PatchTransforms",
    "ImageClassificationData",
    "ImageClassificationDataset",
    "ImageRecord",
    "ImageRecords",
    "center_crop",
    "dataset_identity",
    "draw_training_images",
    "find_hub_dataset",
    "get_benchmark",
    "hub_dataset_for_benchmark",
    "image_transforms",
    "imagenet_classnames",
    "list_benchmarks",
    "load_class_name_map",
    "load_coop_split",
    "load_dataset_registry",
    "load_image_classification",
    "load_imagenet_from_hub",
    "make_synthetic_imagefolder",
    "SMOKE_MODEL_MARKER",
    "smoke_assets",
    "normalize",
    "parse_hub_root",
    "random_resized_crop_params",
    "read_classnames",
    "records_from_hf_dataset",
    "resize_shorter_side",
    "sample_few_shot",
    "sample_few_shot_dassl",
    "split_source_of",
    "split_base_novel",
    "subsample_classes",
    "to_rgb",
    "to_tensor",
]
