"""TFDS builders for the six datasets of "VAE with a VampPrior".

Importing this package registers the builders with TFDS, so that e.g.

    import tfvamp.datasets  # noqa: F401
    ds = tfds.load("tfvamp_static_mnist", split="train", data_dir=...)

works like any TFDS dataset. Builder names are `tfvamp_<short name>`:

    tfvamp_static_mnist, tfvamp_dynamic_mnist, tfvamp_omniglot,
    tfvamp_caltech101_silhouettes, tfvamp_frey_faces, tfvamp_histopathology

The original files are looked for in the manual dir (`--manual_dir`, or
`$TFVAMP_MANUAL_DIR`); see docs/data.md. Files are untrusted until checked: reading is size-bounded
and pickles only ever yield plain numeric arrays (docs/data.md, "Hostile files").
"""
from tfvamp.datasets.builders import (
    BUILDERS,
    SPLIT_SEED,
    SPLITS,
    OmniglotConfig,
    SizeCheckConfig,
    TfvampCaltech101Silhouettes,
    TfvampDynamicMnist,
    TfvampFreyFaces,
    TfvampHistopathology,
    TfvampOmniglot,
    TfvampStaticMnist,
)
from tfvamp.datasets.errors import (
    ChecksumError,
    CorruptFileError,
    DataError,
    MissingFileError,
    ShapeError,
    SizeLimitError,
    UnsafeContentError,
)
from tfvamp.datasets.files import MANUAL_DIR_ENV, MAX_SIZE_ENV, OFFLINE_ENV, SKIP_CHECKSUMS_ENV

NAMES = tuple(BUILDERS)


def builder_name(name: str) -> str:
    """TFDS name of a dataset short name, e.g. 'frey_faces' -> 'tfvamp_frey_faces'."""
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(NAMES)}")
    return BUILDERS[name].name
