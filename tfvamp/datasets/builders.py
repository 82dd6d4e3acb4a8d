"""TFDS builders for the six datasets of "VAE with a VampPrior" (docs/paper_details.md section 6).

Each builder reads the original file(s) (see `files.py` for where they are looked for),
checks them, and writes the paper's `train` / `validation` / `test` splits. Every file is
read and verified in `_split_generators`, before TFDS writes a single record; TFDS writes
into a temporary `<version>.incomplete*` folder and renames it only on success (and removes
it on failure), so a failed build leaves nothing that a later run would trust.

Stored features (all splits):
  image: the image [H, W, 1] as in the file, after the layout fixes that change what a pixel
         *means* (Fortran-order reshape, Caltech's 1 - x). Value preprocessing that is a
         modelling choice (Frey's (x + 0.5) / 256, histopathology's clipping, dynamic
         binarisation) happens in `tfvamp.data`.
  index: int32, position of the image in the original array it came from (for carved
         validation splits: its position in the training file). Splits are stored in
         increasing `index` order.
  label: only where the original has labels (dynamic MNIST 0-9, Caltech 0-100).
"""
from __future__ import annotations

import abc
import dataclasses
import inspect

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from tfvamp.datasets.errors import CorruptFileError, ShapeError
from tfvamp.datasets.files import MANUAL_DIR_ENV, FoundFile, SourceFile, fetch, search_bases
from tfvamp.datasets.parsers import (
    check_binary,
    check_dtype,
    check_shape,
    check_unit_interval,
    load_mat,
    parse_amat,
    parse_idx,
)
from tfvamp.datasets.safe_pickle import unpickle

from tfvamp.datasets.facts import SPLITS, sizes  # noqa: E402  (one table of the datasets' facts)
# Seed of the fixed permutations that carve Frey's and OMNIGLOT's splits. The release
# shuffled without a seed; tfvamp fixes it. np.random.RandomState's stream is frozen by
# NumPy's compatibility policy, so the splits are the same with every NumPy version.
SPLIT_SEED = 2018


@dataclasses.dataclass(eq=False)
class SizeCheckConfig(tfds.core.BuilderConfig):
    """Config of the builders whose original file is not available on every machine.

    Attributes:
      check_sizes: True (the default 'paper' config) requires exactly the paper's image
        counts. False accepts any number of 28x28 images and is meant for running the builder
        end to end on small files in the original format (the tests do this). Give such a
        config its own name: TFDS stores it under `<builder>/<config name>/`, so it can never
        be mistaken for the paper's data.
    """

    check_sizes: bool = True


@dataclasses.dataclass(eq=False)
class OmniglotConfig(SizeCheckConfig):
    """Attributes: num_validation: images carved from the training file for validation."""

    num_validation: int = 1345


def _explicit_manual_dir(dl_manager):
    """The manual dir the user gave, or None if TFDS fell back to <download_dir>/manual.

    The public `dl_manager.manual_dir` raises when the folder is empty or missing, which is
    exactly the case we want to report ourselves, so read the attribute it wraps.
    """
    manual = getattr(dl_manager, "_manual_dir", None)
    if manual is None or str(manual) == str(dl_manager.download_dir / "manual"):
        return None
    return manual


def _instructions(sources: tuple[SourceFile, ...]) -> str:
    lines = [
        "Put the original file(s) below, as distributed or gzipped, in <manual_dir>/<folder>/ "
        "or directly in <manual_dir>/, and name that folder with --manual_dir "
        f"(tfds: DownloadConfig(manual_dir=...)) or ${MANUAL_DIR_ENV}. When a file is absent "
        "and the machine is online it is downloaded from its original URL.",
    ]
    for s in sources:
        lines.append(f"  {s.folder}/{s.name}  <- {s.urls[0]}")
    return "\n".join(lines)


def _examples(images: np.ndarray, index: np.ndarray, **extra: np.ndarray) -> dict:
    """One split as arrays: image [N, H, W, 1], index [N] int32, and e.g. label [N]."""
    out = {"image": images[..., None], "index": np.asarray(index, np.int32)}
    out.update(extra)
    return out


def _carve(n: int, sizes: tuple[int, ...]) -> list[np.ndarray]:
    """Split range(n) by a fixed-seed permutation into parts of `sizes`, each sorted."""
    perm = np.random.RandomState(SPLIT_SEED).permutation(n)
    parts, start = [], 0
    for size in sizes:
        parts.append(np.sort(perm[start:start + size]))
        start += size
    return parts


def _fortran_images(rows: np.ndarray) -> np.ndarray:
    """[N, 784] rows holding 28x28 images in Fortran (column-major) order -> [N, 28, 28]."""
    return rows.reshape(-1, 28, 28).transpose(0, 2, 1)


class _TfvampBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Common machinery: find + verify the sources, then write the splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: the paper's splits, read from the original files."}
    SOURCES: tuple[SourceFile, ...] = ()
    IMAGE_SHAPE = (28, 28, 1)
    IMAGE_DTYPE = np.uint8
    IMAGE_DOC = ""
    NUM_CLASSES: int | None = None
    DESCRIPTION = ""
    HOMEPAGE = ""
    CITATION = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions(cls.SOURCES)

    # TFDS 4.9.x computes this via `importlib_resources`, which it only declares as a
    # dependency for Python < 3.9 (tensorflow/datasets#11212): building then fails with
    # ModuleNotFoundError. Return this builder's source file directly.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        # Plain (unencoded) tensors: ZLIB would store ~7x less, but reads no faster and makes
        # TFDS 4.9 log a deprecation warning on every read. PNG cannot hold float32 pixels.
        features = {
            "image": tfds.features.Tensor(shape=self.IMAGE_SHAPE, dtype=self.IMAGE_DTYPE,
                                          encoding=tfds.features.Encoding.NONE,
                                          doc=self.IMAGE_DOC),
            "index": tfds.features.Scalar(np.int32, doc="position in the original file's array"),
        }
        if self.NUM_CLASSES:
            features["label"] = tfds.features.ClassLabel(num_classes=self.NUM_CLASSES)
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(features),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            # Keep the file order (increasing `index`): reproducible and easy to check.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        download_dir = dl_manager.download_dir
        bases = search_bases(_explicit_manual_dir(dl_manager), download_dir)
        files = [fetch(s, bases, download_dir, self.name) for s in self.SOURCES]
        for f in files:  # a size-relaxed config (the tests' small files) is for non-original files
            f.expect_original = getattr(self.builder_config, "check_sizes", True)
        # Read and verify everything before TFDS writes anything.
        splits = self._read_splits(*files)
        return {name: self._generate_examples(arrays) for name, arrays in splits.items()}

    def _generate_examples(self, arrays: dict):
        for i in range(len(arrays["index"])):
            yield int(arrays["index"][i]), {k: v[i] for k, v in arrays.items()}

    @abc.abstractmethod
    def _read_splits(self, *files: FoundFile) -> dict[str, dict[str, np.ndarray]]:
        """Parse and verify the files; return {split: `_examples(...)`}."""


# ----------------------------------------------------------------------------- static MNIST

_LAROCHELLE = "https://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist"
_STATIC_DIGESTS = {
    "train": "e93c37812c84f500afe331e63615115736a16ab61dbd00577542faed0c83dced",
    "valid": "a2c529ee2c547817a651c0202c0ccb5856748510efbd7c74f0e25bcb219a9feb",
    "test": "8b00d0ad400da3fa9298df984f5eb3a012041de9ea9e89efa7979d4628f3a235",
}
# sha256 and size of the original .amat text (= TFDS' url_checksums/binarized_mnist.txt).
_STATIC_FILES = {
    "train": ("ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d", 78_400_000),
    "valid": ("1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2", 15_680_000),
    "test": ("e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c", 15_680_000),
}


class TfvampStaticMnist(_TfvampBuilder):
    """Static binarized MNIST of Larochelle & Murray: 50000 / 10000 / 10000, pixels 0/1."""

    SOURCES = tuple(
        SourceFile(f"binarized_mnist_{s}.amat", "MNIST_static",
                   (f"{_LAROCHELLE}/binarized_mnist_{s}.amat",), digest=_STATIC_DIGESTS[s],
                   sha256=(_STATIC_FILES[s][0],), max_size=2 * _STATIC_FILES[s][1])
        for s in ("train", "valid", "test"))
    SIZES = sizes("static_mnist")
    IMAGE_DOC = "uint8 0/1 (fixed binarisation of the original file)"
    DESCRIPTION = ("Binarized MNIST with the fixed binarisation of Larochelle & Murray (2011), "
                   "from the original .amat text files; splits = the three files.")
    HOMEPAGE = "https://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
    CITATION = """@inproceedings{larochelle2011nade,
  title={The Neural Autoregressive Distribution Estimator},
  author={Larochelle, Hugo and Murray, Iain}, booktitle={AISTATS}, year={2011}}"""

    def _read_splits(self, train, valid, test):
        out = {}
        for split, f in zip(SPLITS, (train, valid, test)):
            x = parse_amat(f, f.read_bytes())
            check_shape(f, "the image matrix", x, (self.SIZES[split], 784))
            f.verify_digest(x)
            out[split] = _examples(x.reshape(-1, 28, 28), np.arange(len(x)))
        return out


# ----------------------------------------------------------------------------- dynamic MNIST

def _mnist_source(name: str, digest: str, sha256_gz: str, sha256_idx: str, idx_size: int) -> SourceFile:
    """One MNIST file: sha256 of the original .gz (= TFDS' url_checksums/mnist.txt) and of the
    IDX file inside it, and the IDX file's size."""
    # Some unpackers (and the MNIST web page's links on Windows) write "train-images.idx3-ubyte".
    alt = name.replace("-idx", ".idx").removesuffix(".gz")
    # The https mirrors first: yann.lecun.com serves http only (and often refuses scripts).
    # Every download must match the sha256 before it is parsed, whichever URL served it.
    return SourceFile(name, "MNIST", (
        f"https://storage.googleapis.com/cvdf-datasets/mnist/{name}",
        f"https://ossci-datasets.s3.amazonaws.com/mnist/{name}",
        f"http://yann.lecun.com/exdb/mnist/{name}",
    ), alt_names=(alt,), digest=digest, sha256=(sha256_gz, sha256_idx), max_size=2 * idx_size)


class TfvampDynamicMnist(_TfvampBuilder):
    """Grey-scale MNIST for dynamic binarisation: first 50000 / last 10000 of train, 10000 test."""

    SOURCES = (
        _mnist_source("train-images-idx3-ubyte.gz", "157fe16da1dbced4a1376f4be5df2d665d51d11177dcaf7aa4848b1ff033343f",
                      "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                      "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47_040_016),
        _mnist_source("train-labels-idx1-ubyte.gz", "e6a049a9876d2010dddfc2322bb8cad03f5934de9a0b5012c7251eca5b5a7201",
                      "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                      "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60_008),
        _mnist_source("t10k-images-idx3-ubyte.gz", "fbf9701b11f5659e6366884b0bbf01ea129fb049e3239251eddb226ada72239e",
                      "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                      "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7_840_016),
        _mnist_source("t10k-labels-idx1-ubyte.gz", "6a90c4ebf8538b9b76438e5dddb0f5afc42d636e8e259d894485f9314cdad47d",
                      "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                      "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10_008),
    )
    NUM_CLASSES = 10
    IMAGE_DOC = "uint8 grey 0..255 as in the IDX file (tfvamp.data scales by 1/255 and binarises)"
    DESCRIPTION = ("MNIST grey-scale images from the original IDX files. train = the first 50000 "
                   "images of the training file, validation = its last 10000, test = the 10000 "
                   "test images. Binarisation happens in the input pipeline.")
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"
    CITATION = """@article{lecun1998mnist,
  title={Gradient-based learning applied to document recognition},
  author={LeCun, Yann and Bottou, L{\\'e}on and Bengio, Yoshua and Haffner, Patrick},
  journal={Proceedings of the IEEE}, year={1998}}"""

    def _read_splits(self, train_x, train_y, test_x, test_y):
        xs, ys = [], []
        for fx, fy, n in ((train_x, train_y, 60000), (test_x, test_y, 10000)):
            x = parse_idx(fx, fx.read_bytes(), (n, 28, 28))
            y = parse_idx(fy, fy.read_bytes(), (n,))
            if y.max() > 9:
                fy.fail(ShapeError, f"has labels outside 0..9 (max {y.max()}); not MNIST labels")
            fx.verify_digest(x)
            fy.verify_digest(y)
            xs.append(x)
            ys.append(y)
        (x, x_test), (y, y_test) = xs, ys
        return {
            "train": _examples(x[:50000], np.arange(50000), label=y[:50000]),
            "validation": _examples(x[50000:], np.arange(50000, 60000), label=y[50000:]),
            "test": _examples(x_test, np.arange(10000), label=y_test),
        }


# ----------------------------------------------------------------------------- OMNIGLOT

class TfvampOmniglot(_TfvampBuilder):
    """OMNIGLOT 28x28 of Burda et al.: 23000 / 1345 (carved, fixed seed) / 8070, grey in [0, 1]."""

    SOURCES = (SourceFile(
        "chardata.mat", "OMNIGLOT",
        ("https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat",),
        md5="21ecaf34373511aa7691cf2e0802aa3d",
        # The id in yburda/iwae's tree (commit 78a6075): a checksum of the original's bytes,
        # although no copy of the file itself was available to check it against here.
        git_blob="016a3536ffe5e1d38e42563a18d7a78bfaf643ec",
        # Size unknown; upper estimate: every variable (data, testdata, target, ..., 835 rows
        # for 32415 images) stored uncompressed as float64 = 217 MB.
        max_size=2 * 217_000_000),)
    BUILDER_CONFIGS = [OmniglotConfig(
        name="paper", description="The paper's sizes: 24345 training-file images (23000 train + "
        "1345 validation) and 8070 test images.")]
    IMAGE_DTYPE = np.float32
    IMAGE_DOC = "float32 grey in [0, 1] as in chardata.mat (binarised in tfvamp.data)"
    DESCRIPTION = ("OMNIGLOT 28x28 as preprocessed by Burda et al. (chardata.mat; each column a "
                   "28x28 image in Fortran order). validation = 1345 images of the training file "
                   f"picked by a fixed permutation (np.random.RandomState({SPLIT_SEED})).")
    HOMEPAGE = "https://github.com/yburda/iwae"
    CITATION = """@article{lake2015omniglot,
  title={Human-level concept learning through probabilistic program induction},
  author={Lake, Brenden M and Salakhutdinov, Ruslan and Tenenbaum, Joshua B},
  journal={Science}, year={2015}}
@inproceedings{burda2016iwae,
  title={Importance Weighted Autoencoders},
  author={Burda, Yuri and Grosse, Roger and Salakhutdinov, Ruslan}, booktitle={ICLR}, year={2016}}"""

    def _read_splits(self, f):
        mat = load_mat(f, f.read_bytes(), ("data", "testdata"))
        cfg = self.builder_config
        n_train, n_test = (24345, 8070) if cfg.check_sizes else (None, None)
        check_shape(f, "`data`", mat["data"], (784, n_train))
        check_shape(f, "`testdata`", mat["testdata"], (784, n_test))
        for key in ("data", "testdata"):
            check_dtype(f, f"`{key}`", mat[key], "f", "floating-point grey values in [0, 1]")
            check_unit_interval(f, f"`{key}`", mat[key])
        f.verify_digest()  # the bytes (git blob id) when under the original's name
        n = mat["data"].shape[1]
        if not 0 < cfg.num_validation < n:
            f.fail(ShapeError, f"has {n} training images, too few to carve "
                               f"{cfg.num_validation} for validation")
        x = _fortran_images(mat["data"].T.astype(np.float32))
        x_test = _fortran_images(mat["testdata"].T.astype(np.float32))
        train, val = _carve(n, (n - cfg.num_validation, cfg.num_validation))
        return {
            "train": _examples(x[train], train),
            "validation": _examples(x[val], val),
            "test": _examples(x_test, np.arange(len(x_test))),
        }


# ----------------------------------------------------------------------------- Caltech

class TfvampCaltech101Silhouettes(_TfvampBuilder):
    """Caltech 101 Silhouettes 28x28, split 1 of Marlin et al.: 4100 / 2264 / 2307, objects = 1."""

    SOURCES = (SourceFile(
        "caltech101_silhouettes_28_split1.mat", "Caltech101Silhouettes",
        ("https://people.cs.umass.edu/~marlin/data/caltech101_silhouettes_28_split1.mat",),
        digest="70648b83629d810c48bbc36efff349d796601d677bae8ca03de6ad5f8963552f",
        sha256=("eb6735e8d84b1850fabc5590124aab1755e90c9fd28123585324398405e1e42a",),
        max_size=2 * 6_813_928),)  # what its compressed variables inflate to (the file: 872 KB)
    SIZES = sizes("caltech101_silhouettes")
    NUM_CLASSES = 101
    IMAGE_DOC = "uint8 0/1, inverted from the file (1 - x) so that object pixels are 1"
    DESCRIPTION = ("Caltech 101 Silhouettes 28x28, split 1, from the original .mat file: rows "
                   "are images in Fortran order; pixels inverted (1 - x) as in the paper's code "
                   "so the object is 1 on a 0 background. Labels 0..100 = file labels - 1.")
    HOMEPAGE = "https://people.cs.umass.edu/~marlin/data.shtml"
    CITATION = """@inproceedings{marlin2010inductive,
  title={Inductive Principles for Restricted Boltzmann Machine Learning},
  author={Marlin, Benjamin and Swersky, Kevin and Chen, Bo and de Freitas, Nando},
  booktitle={AISTATS}, year={2010}}"""

    def _read_splits(self, f):
        prefixes = {"train": "train", "validation": "val", "test": "test"}
        keys = [f"{p}_{kind}" for p in prefixes.values() for kind in ("data", "labels")]
        mat = load_mat(f, f.read_bytes(), keys)
        out = {}
        for split, p in prefixes.items():
            x, y = mat[f"{p}_data"], mat[f"{p}_labels"]
            check_shape(f, f"`{p}_data`", x, (self.SIZES[split], 784))
            check_shape(f, f"`{p}_labels`", y, (self.SIZES[split], 1))
            check_binary(f, f"`{p}_data`", x)
            if y.min() < 1 or y.max() > 101:
                f.fail(ShapeError, f"has labels outside 1..101 in `{p}_labels`")
        f.verify_digest(*(mat[k] for k in keys))
        for split, p in prefixes.items():
            x = 1 - _fortran_images(mat[f"{p}_data"].astype(np.uint8))
            y = mat[f"{p}_labels"][:, 0].astype(np.int64) - 1
            out[split] = _examples(x, np.arange(len(x)), label=y)
        return out


# ----------------------------------------------------------------------------- Frey Faces

class TfvampFreyFaces(_TfvampBuilder):
    """Frey Faces, 1965 grey images 28x20: random 1565 / 200 / 200 split with a fixed seed."""

    SOURCES = (SourceFile(
        "freyfaces.pkl", "Freyfaces",
        ("https://github.com/jmtomczak/vae_vampprior/raw/master/datasets/Freyfaces/freyfaces.pkl",),
        alt_names=("frey_rawface.mat",), digest="1056424259835ee7082802a13633b9d004232e19f5daeb1dd1ac99be0c098502",
        sha256=("3b69410c6a5fd6e03f09012905168be3712373a094a776f7e58fcd0670d2138a",),
        max_size=2 * 3_568_521),)
    SIZES = sizes("frey_faces")
    IMAGE_SHAPE = (28, 20, 1)
    IMAGE_DOC = "uint8 raw grey 0..255 (tfvamp.data maps x -> (x + 0.5) / 256)"
    DESCRIPTION = ("Brendan Frey's face images, 1965 x 28x20 grey, from freyfaces.pkl (the copy "
                   "the paper's code ships) or Roweis' frey_rawface.mat. The paper's random "
                   f"1565/200/200 split, made with np.random.RandomState({SPLIT_SEED}).")
    HOMEPAGE = "https://cs.nyu.edu/~roweis/data.html"
    CITATION = """@misc{frey_faces,
  title={Frey Face images}, author={Frey, Brendan},
  howpublished={\\url{https://cs.nyu.edu/~roweis/data.html}}}"""

    def _read_splits(self, f):
        raw = f.read_bytes()
        if raw.startswith(b"MATLAB"):
            # Roweis' original: `ff` is 560 x 1965, each column a row-major 28x20 image.
            x = load_mat(f, raw, ("ff",))["ff"].T
            check_shape(f, "`ff` (transposed)", x, (1965, 560))
        else:
            obj = unpickle(f, raw)
            x = obj[0] if isinstance(obj, (list, tuple)) and obj else obj
            if not isinstance(x, np.ndarray):
                f.fail(CorruptFileError, f"holds a {type(x).__name__}, expected a list with one "
                                         "numpy array of 1965 x 560")
            check_shape(f, "the image array", x, (1965, 560))
        check_dtype(f, "the image array", x, "biuf", "integers in 0..255")
        if x.dtype != np.uint8:
            if not np.issubdtype(x.dtype, np.number) or x.min() < 0 or x.max() > 255 or (x % 1).any():
                f.fail(ShapeError, f"holds {x.dtype} values that are not integers in 0..255")
            x = x.astype(np.uint8)
        if raw.startswith(b"MATLAB"):
            f.verify_digest()  # no reference for the .mat: logged as shape-verified
        else:
            f.verify_digest(x)
        images = x.reshape(-1, 28, 20)
        out = {}
        for split, idx in zip(SPLITS, _carve(1965, tuple(self.SIZES.values()))):
            out[split] = _examples(images[idx], idx)
        return out


# ----------------------------------------------------------------------------- histopathology

class TfvampHistopathology(_TfvampBuilder):
    """Grey histopathology patches of Tomczak & Welling (2016): 6800 / 2000 / 2000, 28x28 in [0, 1]."""

    SOURCES = (SourceFile(
        "histopathology.pkl.tar.gz", "HistopathologyGray",
        ("https://github.com/jmtomczak/vae_householder_flow/raw/master/datasets/"
         "histopathologyGray/histopathology.pkl.tar.gz",),
        alt_names=("histopathology.pkl",),
        # The id in jmtomczak/vae_householder_flow's tree (commit 9a71a42): a checksum of the
        # original .tar.gz, although no copy was available to check it against here.
        git_blob="40e100f65969106cbcf3c0f6f29e70e8e7e14fe3",
        # Size unknown; upper estimate: 10800 x 784 float64 (68 MB) in a protocol-0 pickle,
        # whose text escapes make the bytes about 3.5 times larger (freyfaces.pkl: 3.2 times).
        max_size=2 * 240_000_000),)
    BUILDER_CONFIGS = [SizeCheckConfig(
        name="paper", description="The paper's sizes: 6800 / 2000 / 2000 images.")]
    SIZES = sizes("histopathology")
    KEYS = {"train": "training", "validation": "validation", "test": "test"}
    IMAGE_DTYPE = np.float32
    IMAGE_DOC = "float32 grey in [0, 1] as in the pickle (tfvamp.data clips to [1/512, 1 - 1/512])"
    DESCRIPTION = ("28x28 grey patches of histopathology images (Tomczak & Welling, 2016), from "
                   "histopathology.pkl (a dict of training/validation/test image arrays), "
                   "plain or in the original .tar.gz.")
    HOMEPAGE = "https://github.com/jmtomczak/vae_householder_flow"
    CITATION = """@article{tomczak2016householder,
  title={Improving Variational Auto-Encoders using Householder Flow},
  author={Tomczak, Jakub M and Welling, Max}, journal={arXiv:1611.09630}, year={2016}}"""

    def _read_splits(self, f):
        data = unpickle(f, f.read_bytes(tar_member="histopathology.pkl"))
        if not isinstance(data, dict) or not all(k in data for k in self.KEYS.values()):
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            f.fail(CorruptFileError, f"is not the histopathology pickle: expected a dict with keys "
                                     f"{list(self.KEYS.values())}, found {keys}")
        out = {}
        for split, key in self.KEYS.items():
            x = self._grey_images(f, key, data[key])
            # Accept [N, 784], [N, 28, 28], [N, 28, 28, 1] and [N, 1, 28, 28] (all row-major).
            if x.ndim < 2 or int(np.prod(x.shape[1:])) != 784:
                check_shape(f, f"`{key}`", x, (None, 28, 28))
            x = x.reshape(-1, 28, 28)
            n = self.SIZES[split] if self.builder_config.check_sizes else None
            check_shape(f, f"`{key}`", x, (n, 28, 28))
            check_unit_interval(f, f"`{key}`", x)
            out[split] = _examples(x, np.arange(len(x)))
        f.verify_digest()  # the bytes (git blob id) when under the original's name
        return out

    @staticmethod
    def _grey_images(f: FoundFile, key: str, value) -> np.ndarray:
        """`value` (an array, or a list of image arrays as the original pickles) as float32."""
        if not isinstance(value, (np.ndarray, list, tuple)):
            f.fail(ShapeError, f"holds a {type(value).__name__} as `{key}`, expected an array or "
                               f"a list of 28x28 images")
        try:
            x = np.asarray(value)
        except (ValueError, TypeError) as e:
            f.fail(ShapeError, f"holds `{key}` that is not an array of 28x28 images ({e})")
        check_dtype(f, f"`{key}`", x, "f", "floating-point grey values in [0, 1]")
        return x.astype(np.float32)


BUILDERS = {
    "static_mnist": TfvampStaticMnist,
    "dynamic_mnist": TfvampDynamicMnist,
    "omniglot": TfvampOmniglot,
    "caltech101_silhouettes": TfvampCaltech101Silhouettes,
    "frey_faces": TfvampFreyFaces,
    "histopathology": TfvampHistopathology,
}
