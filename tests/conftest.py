"""Shared test set-up: a small TF footprint and the data folder beside the project."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `--compute_dtype=auto` (the default) picks by hardware; tests run alike on every machine, so it is
# pinned to float32 here (tests/test_precision.py covers the choice itself, hardware mocked).
os.environ.setdefault("TFVAMP_AUTO_COMPUTE_DTYPE", "float32")
_SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
if os.path.isdir(_SHARED_DATA):
    os.environ.setdefault("TFVAMP_MANUAL_DIR", _SHARED_DATA)

# ---- data (tfvamp.datasets / tfvamp.data) ---------------------------------------------------
import pathlib  # noqa: E402

import pytest  # noqa: E402

# Tests never touch the network: a missing data file fails at once instead of being downloaded.
os.environ.setdefault("TFVAMP_OFFLINE", "1")
# Nor the user's TFDS folder: what a test prepares without naming a data_dir (own images under
# tfvamp_sources/, TFDS datasets) goes to a folder of this session, removed at exit.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["TFDS_DATA_DIR"] = tempfile.mkdtemp(prefix="tfvamp_tests_tfds_")
atexit.register(shutil.rmtree, os.environ["TFDS_DATA_DIR"], True)


@pytest.fixture(scope="session")
def shared_data():
    """The folder with the original data files (../shared/data), or skip."""
    if not os.path.isdir(_SHARED_DATA):
        pytest.skip(f"no data folder at {_SHARED_DATA}")
    return pathlib.Path(_SHARED_DATA)


@pytest.fixture(autouse=True)
def _global_seed():
    """Each test starts from the same TensorFlow global seed, so a statistical check (a Monte
    Carlo estimate against a closed form, within a few standard errors) sees the same draws on
    every run instead of failing once in a few thousand runs; draws within a test still differ."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tf.random.set_seed(1234)
    yield


@pytest.fixture(scope="session")
def real_data_dir(tmp_path_factory, shared_data):
    """`get(name)` -> a TFDS data_dir holding dataset `name` built from the real files.

    Each dataset is built on first use, once per session, by the real builders from
    ../shared/data; a dataset whose original files are absent is skipped with the reason.
    """
    from tfvamp import data  # pylint: disable=import-outside-toplevel

    data_dir = tmp_path_factory.mktemp("tfds_real")
    built = {}

    def get(name):
        if name not in built:
            missing = data.missing_files(name, data_dir=data_dir, manual_dir=shared_data)
            if missing:
                pytest.skip(f"{name}: original file(s) {', '.join(missing)} not in {shared_data}")
            data.prepare([name], data_dir=data_dir, manual_dir=shared_data, echo=lambda _: None)
            built[name] = str(data_dir)
        return built[name]

    return get
