"""Hostile data files: forged pickles, decompression bombs, oversize downloads, wrong bytes.

The two attacks that crash or exhaust the process run in a child process, so that a
regression shows up as a failed test (a signal, a MemoryError) instead of killing pytest or
the machine:
  * a pickle that uses only the allow-listed numpy globals, but gives a dtype an object
    field over raw bytes (numpy then dereferences pointers from the file: SIGSEGV);
  * files that gunzip / unpack / inflate to gigabytes. The child limits its own address space
    (RLIMIT_AS) and reports its peak RSS.
Everything else runs in-process on small files.
"""
import dataclasses
import gzip
import hashlib
import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from numpy._core.multiarray import _reconstruct
from numpy._core.numeric import _frombuffer

import tfvamp.datasets as D
from tfvamp.datasets import files, safe_pickle

REPO = Path(__file__).resolve().parents[1]
# Sizes of the original files (../shared/data/README.md), and the policy under test: a file
# may expand to at most about twice its original.
FREY_PKL_BYTES = 3_568_521
AMAT_TRAIN_BYTES = 78_400_000
FREY_CAP = f"{2 * FREY_PKL_BYTES / 1e6:,.1f} MB"      # 7.1 MB
AMAT_TRAIN_CAP = f"{2 * AMAT_TRAIN_BYTES / 1e6:,.1f} MB"  # 156.8 MB
FREY_URL = "https://github.com/jmtomczak/vae_vampprior/raw/master/datasets/Freyfaces/freyfaces.pkl"
HISTO_URL = ("https://github.com/jmtomczak/vae_householder_flow/raw/master/datasets/"
             "histopathologyGray/histopathology.pkl.tar.gz")


# ----------------------------------------------------------------------------- helpers

@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """(manual_dir, data_dir): empty, with no $TFVAMP_MANUAL_DIR fallback and no downloads."""
    for name in ("TFVAMP_MANUAL_DIR", "TFVAMP_SKIP_CHECKSUMS", "TFVAMP_MAX_DECOMPRESSED_MB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TFVAMP_OFFLINE", "1")
    manual = tmp_path / "manual"
    manual.mkdir()
    return manual, tmp_path / "tfds"


def build(name, manual_dir, data_dir, small=False):
    config = None
    if small:
        cls = D.OmniglotConfig if name == "omniglot" else D.SizeCheckConfig
        config = cls(name="small_test", check_sizes=False,
                     **({"num_validation": 2} if name == "omniglot" else {}))
    builder = tfds.builder(D.builder_name(name), data_dir=os.fspath(data_dir), config=config)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir), try_download_gcs=False))
    return builder


def leftovers(data_dir):
    """Dataset version folders, complete or half-written, that a later run could trust."""
    return [p for p in Path(data_dir).rglob("*")
            if p.is_dir() and ("1.0.0" in p.name or "incomplete" in p.name)]


def histopathology_pickle(splits, protocol=2):
    return pickle.dumps({k: list(v) for k, v in splits.items()}, protocol=protocol)


def tar_gz(member, raw):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def git_hash_object(path):
    """The blob id as git itself computes it (an implementation independent of tfvamp's)."""
    return subprocess.run(["git", "hash-object", "--no-filters", os.fspath(path)], check=True,
                          capture_output=True, text=True).stdout.strip()


# ----------------------------------------------------------------------------- the child process

_CHILD = r'''
"""Runs the cases given as JSON in argv[1]; prints one "@@"-prefixed JSON line per event."""
import json, resource, sys
from pathlib import Path

import tensorflow_datasets as tfds
import tfvamp.datasets as D
from tfvamp.datasets import files, safe_pickle


def vm_bytes():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))


# After the imports: a regression must end in a MemoryError here, not in the OOM killer.
resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + int(sys.argv[2]), resource.RLIM_INFINITY))
start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def report(**kw):
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kw["peak_mb_above_start"] = (peak_kb - start_kb) / 1024
    print("@@" + json.dumps(kw), flush=True)


def run(case):
    if case["kind"] == "unpickle":
        path = Path(case["path"])
        source = files.SourceFile(path.name, "", ("https://example.org/original",))
        safe_pickle.unpickle(files.FoundFile(path, source, "test"), path.read_bytes())
        return
    builder = tfds.builder(D.builder_name(case["builder"]), data_dir=case["data_dir"])
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=case["manual"], try_download_gcs=False))


for case in json.loads(sys.argv[1]):
    report(case=case["id"], started=True)
    try:
        run(case)
        report(case=case["id"], error=None)
    except BaseException as e:  # MemoryError too: the parent reports it
        report(case=case["id"], error=type(e).__name__, message=str(e)[:3000])
'''


def run_child(cases, address_space_headroom=2 << 30):
    """Run `cases` in a fresh interpreter importing this worktree's tfvamp; return its report."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TFVAMP_MANUAL_DIR", "TFVAMP_SKIP_CHECKSUMS", "TFVAMP_MAX_DECOMPRESSED_MB")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="2", TFVAMP_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cases),
                           str(address_space_headroom)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    events = [json.loads(line[2:]) for line in proc.stdout.splitlines() if line.startswith("@@")]
    started = [e["case"] for e in events if e.get("started")]
    results = {e["case"]: e for e in events if not e.get("started")}
    return {"returncode": proc.returncode, "results": results,
            "last_started": started[-1] if started else None, "stderr": proc.stderr}


def child_result(run, case_id):
    """The child's report of one case; fails if the child died (e.g. SIGSEGV) or skipped it."""
    rc = run["returncode"]
    assert rc >= 0, (f"the loader died with signal {-rc} while running case "
                     f"{run['last_started']!r}\n{run['stderr'][-3000:]}")
    assert rc == 0, f"the child failed (exit {rc})\n{run['stderr'][-3000:]}"
    assert case_id in run["results"], f"no result for {case_id}\n{run['stderr'][-3000:]}"
    return run["results"][case_id]


# ----------------------------------------------------------------------------- forged pickles

_POINTER = (0x4141414141414141).to_bytes(8, "little")  # a non-canonical address: SIGSEGV
_OBJECT_FIELD = (("f0",), {"f0": (np.dtype("O"), 0)})


class _ForgedDtype:
    """Pickles as numpy.dtype(spec) followed by the given __setstate__ state."""

    def __init__(self, spec, state):
        self.spec, self.state = spec, state

    def __reduce__(self):
        return np.dtype, (self.spec, False, True), self.state


class _ForgedArray:
    """Pickles as numpy's _reconstruct(ndarray) + __setstate__ laying `dtype` over `raw`."""

    def __init__(self, dtype, raw):
        self.dtype, self.raw = dtype, raw

    def __reduce__(self):
        state = (1, (len(self.raw) // 8,), self.dtype, False, self.raw)
        return _reconstruct, (np.ndarray, (0,), b"b"), state


class _ForgedBuffer(_ForgedArray):
    """Pickles as numpy's protocol-5 _frombuffer(bytes, dtype, shape, order)."""

    def __reduce__(self):
        return _frombuffer, (self.raw, self.dtype, (len(self.raw) // 8,), "C")


# Flags without NPY_LIST_PICKLE, so that numpy's own __setstate__ accepts raw bytes.
FORGED = {
    # The attack: a void dtype whose state adds an object field.
    "void_with_object_field": (_ForgedArray, ("V8", (3, "|", None, *_OBJECT_FIELD, 8, 1, 25)), 2),
    # A plain-looking type given the field afterwards, through the dtype's own __setstate__.
    "plain_given_object_field": (_ForgedArray, ("u8", (3, "|", None, *_OBJECT_FIELD, 8, 1, 25)), 0),
    "object_dtype_over_bytes": (_ForgedArray, ("O8", (3, "|", None, None, None, -1, -1, 0)), 2),
    "frombuffer_with_object_field": (_ForgedBuffer, ("V8", (3, "|", None, *_OBJECT_FIELD, 8, 1, 25)), 5),
}
ALLOWED_GLOBALS = {"numpy dtype", "numpy ndarray", "numpy._core.multiarray _reconstruct",
                   "_codecs encode", "numpy._core.numeric _frombuffer"}


def forged_array(variant):
    cls, (spec, state), _ = FORGED[variant]
    return cls(_ForgedDtype(spec, state), _POINTER * 4)


def forged_pickle(variant, wrap=lambda a: [a]):
    return pickle.dumps(wrap(forged_array(variant)), protocol=FORGED[variant][2])


def pickle_globals(data):
    """'module name' of every global a pickle loads (GLOBAL, and STACK_GLOBAL of protocol 4+)."""
    names, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            names.add(arg)
        elif op.name == "STACK_GLOBAL":
            names.add(f"{strings[-2]} {strings[-1]}")
        elif isinstance(arg, str):
            strings.append(arg)
    return names


@pytest.mark.parametrize("variant", list(FORGED))
def test_forged_pickles_use_only_allow_listed_globals(variant):
    # So that the refusal below is the dtype check's doing, not the global allow-list's.
    assert pickle_globals(forged_pickle(variant)) <= ALLOWED_GLOBALS


@pytest.mark.parametrize("variant", ["void_with_object_field", "object_dtype_over_bytes"])
def test_forged_pickle_crashes_an_unrestricted_loader(tmp_path, variant):
    """The control: read with plain pickle, the file kills the process (the attack is real)."""
    path = tmp_path / "forged.pkl"
    path.write_bytes(forged_pickle(variant))
    code = ("import pickle, sys, numpy as np; "
            "np.asarray(pickle.load(open(sys.argv[1], 'rb'))[0], np.float32)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=120)
    assert proc.returncode < 0, proc.stderr.decode()[-2000:]


@pytest.fixture(scope="module")
def pickle_attack(tmp_path_factory):
    """Every forged pickle through `unpickle`, and three through the builders, in one child."""
    root = tmp_path_factory.mktemp("forged")
    cases = []
    for variant in FORGED:
        path = root / f"{variant}.pkl"
        path.write_bytes(forged_pickle(variant))
        cases.append({"id": variant, "kind": "unpickle", "path": str(path)})
    keys = ("training", "validation", "test")
    as_histopathology = lambda a: {k: [a] for k in keys}  # noqa: E731
    forged_files = {
        "frey_faces": ("freyfaces.pkl", forged_pickle("void_with_object_field")),
        "histopathology": ("histopathology.pkl",
                           forged_pickle("void_with_object_field", as_histopathology)),
        "histopathology_tar_gz": ("histopathology.pkl.tar.gz", tar_gz(
            "histopathology.pkl", forged_pickle("plain_given_object_field", as_histopathology))),
    }
    for case_id, (name, raw) in forged_files.items():
        (root / case_id / "manual").mkdir(parents=True)
        (root / case_id / "manual" / name).write_bytes(raw)
        cases.append({"id": case_id, "kind": "build", "builder": case_id.removesuffix("_tar_gz"),
                      "manual": str(root / case_id / "manual"), "data_dir": str(root / case_id / "tfds")})
    return {"run": run_child(cases), "root": root}


@pytest.mark.parametrize("variant", list(FORGED))
def test_forged_pickle_is_refused_before_any_array_exists(pickle_attack, variant):
    result = child_result(pickle_attack["run"], variant)
    assert result["error"] == "UnsafeContentError", result
    message = result["message"]
    assert str(pickle_attack["root"] / f"{variant}.pkl") in message
    assert "refusing numpy dtype" in message and "Fix:" in message


@pytest.mark.parametrize("case_id, file_name", [
    ("frey_faces", "freyfaces.pkl"),
    ("histopathology", "histopathology.pkl"),
    ("histopathology_tar_gz", "histopathology.pkl.tar.gz"),
])
def test_forged_pickle_fails_the_build_cleanly(pickle_attack, case_id, file_name):
    result = child_result(pickle_attack["run"], case_id)
    assert result["error"] == "UnsafeContentError", result
    message = result["message"]
    assert str(pickle_attack["root"] / case_id / "manual" / file_name) in message
    assert "refusing numpy dtype" in message and "Fix:" in message
    url = FREY_URL if case_id == "frey_faces" else HISTO_URL
    assert url in message
    assert not leftovers(pickle_attack["root"] / case_id / "tfds")


# ----------------------------------------------------------------------------- bombs

def write_gzip_bomb(path, gib):
    """About `gib` MB that gunzip to `gib` GiB of zeros.

    Zeros streamed through GzipFile in 16 MiB chunks make one 64 MiB member (~65 KB); gzip
    allows members to be concatenated, so 16 copies of it per GiB are one stream.
    """
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as g:
        for _ in range(4):
            g.write(bytes(16 << 20))
    member = buf.getvalue()
    with gzip.GzipFile(fileobj=io.BytesIO(member)) as g:  # the member is what we claim
        assert sum(len(c) for c in iter(lambda: g.read(16 << 20), b"")) == 64 << 20
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(member * (16 * gib))


def write_sparse_tar(path, member, real_size):
    """A GNU sparse tar whose one member announces `real_size` bytes: all hole but 512 stored."""
    info = tarfile.TarInfo(member)
    info.size, info.type = 512, tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    octal = lambda n: b"%011o\0" % n  # noqa: E731  12-byte octal fields
    header[386:398], header[398:410] = octal(real_size - 512), octal(512)  # sparse map entry 0
    header[483:495] = octal(real_size)  # the member's real size
    header[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    header[148:156] = b"%06o\0 " % sum(header)
    path.write_bytes(bytes(header) + b"x" * 512 + bytes(1024))


def write_mat_bomb(path, name, rows, cols):
    """A MATLAB v5 file holding one zlib-compressed float64 zero matrix `name` (rows x cols)."""
    nbytes = rows * cols * 8
    label = name.encode()
    body = (struct.pack("<IIII", 6, 8, 6, 0)  # array flags: mxDOUBLE_CLASS
            + struct.pack("<IIii", 5, 8, rows, cols)  # dimensions
            + struct.pack("<II", 1, len(label)) + label + bytes(-len(label) % 8)  # name
            + struct.pack("<II", 9, nbytes))  # the real part: miDOUBLE, followed by the zeros
    deflate = zlib.compressobj(6)
    parts = [deflate.compress(struct.pack("<II", 14, len(body) + nbytes) + body)]
    for start in range(0, nbytes, 16 << 20):
        parts.append(deflate.compress(bytes(min(16 << 20, nbytes - start))))
    parts.append(deflate.flush())
    compressed = b"".join(parts)
    header = (b"MATLAB 5.0 MAT-file, written by tfvamp's tests".ljust(116, b" ") + bytes(8)
              + struct.pack("<H", 0x0100) + b"IM")
    path.write_bytes(header + struct.pack("<II", 15, len(compressed)) + compressed)


def test_mat_bomb_helper_writes_what_scipy_reads(tmp_path):
    write_mat_bomb(tmp_path / "small.mat", "ff", 3, 4)
    np.testing.assert_array_equal(scipy.io.loadmat(tmp_path / "small.mat")["ff"], np.zeros((3, 4)))


def test_sparse_tar_helper_announces_its_size(tmp_path):
    write_sparse_tar(tmp_path / "s.tar", "histopathology.pkl", 8 << 30)
    with tarfile.open(tmp_path / "s.tar") as tar:
        (member,) = tar.getmembers()
        assert member.issparse() and member.size == 8 << 30
        assert tar.extractfile(member).read(1 << 20) == bytes(1 << 20)  # holes read as zeros


BOMBS = {  # case -> (builder, file, phrase of the error)
    "gzip_as_freyfaces_pkl": ("frey_faces", "freyfaces.pkl",
                              f"expands, when gunzipped, to more than {FREY_CAP}"),
    "gzip_as_amat": ("static_mnist", "MNIST_static/binarized_mnist_train.amat.gz",
                     f"expands, when gunzipped, to more than {AMAT_TRAIN_CAP}"),
    "sparse_tar_member": ("histopathology", "histopathology.pkl.tar",
                          "holds histopathology.pkl, which unpacks to more than"),
    "mat_variable": ("frey_faces", "frey_rawface.mat",
                     f"holds MATLAB variables that inflate to more than {FREY_CAP}"),
}


@pytest.fixture(scope="module")
def bomb_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bombs")
    for case_id, (_, file_name, _) in BOMBS.items():
        path = root / case_id / "manual" / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        if case_id == "gzip_as_freyfaces_pkl":  # 1 MB: an 8 MB file would be over Frey's limit as is
            write_gzip_bomb(path, gib=1)
        elif case_id == "gzip_as_amat":  # the 8 MB -> 8 GiB
            write_gzip_bomb(path, gib=8)
        elif case_id == "sparse_tar_member":
            write_sparse_tar(path, "histopathology.pkl", 8 << 30)
        else:
            write_mat_bomb(path, "ff", 4096, 8192)  # 256 MiB of float64 in 0.26 MB
    static = root / "gzip_as_amat" / "manual" / "MNIST_static"
    for other in ("valid", "test"):  # static MNIST needs all three files to start reading
        (static / f"binarized_mnist_{other}.amat").write_text("0\n")
    cases = [{"id": c, "kind": "build", "builder": b, "manual": str(root / c / "manual"),
              "data_dir": str(root / c / "tfds")} for c, (b, _, _) in BOMBS.items()]
    return {"run": run_child(cases), "root": root}


@pytest.mark.parametrize("case_id", list(BOMBS))
def test_bomb_stops_early_with_a_clear_error(bomb_run, case_id):
    builder, file_name, phrase = BOMBS[case_id]
    result = child_result(bomb_run["run"], case_id)
    assert result["error"] == "SizeLimitError", result
    message = result["message"]
    assert str(bomb_run["root"] / case_id / "manual" / file_name) in message
    assert phrase in message
    assert "TFVAMP_MAX_DECOMPRESSED_MB" in message and "Fix:" in message
    assert D.BUILDERS[builder].SOURCES[0].urls[0] in message
    assert not leftovers(bomb_run["root"] / case_id / "tfds")


def test_bombs_keep_memory_bounded(bomb_run):
    # Without the limits each of these needs 0.25 to 8 GiB; with them, at most the largest
    # limit in play (static MNIST's 156.8 MB) of gunzipped data is ever held.
    for case_id in BOMBS:
        peak = child_result(bomb_run["run"], case_id)["peak_mb_above_start"]
        assert peak < 512, f"{case_id}: peak RSS {peak:.0f} MB above the child's start"


# ----------------------------------------------------------------------------- legitimate pickles

@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_unpickle_rebuilds_plain_arrays_exactly(tmp_path, protocol):
    rng = np.random.default_rng(0)
    original = {
        "big_endian": np.arange(12, dtype=">i4").reshape(3, 4),
        "fortran": np.asfortranarray(rng.random((3, 5)).astype(np.float32)),
        "bool": np.array([True, False, True]),
        "empty": np.zeros((0, 784), np.float64),
        "scalar_0d": np.array(2.5),
        "list_of_images": [rng.random((28, 28)) for _ in range(3)],
        "numpy_scalars": [np.uint8(7), np.float64(0.25)],
        "plain": (1, "x", b"y", None, 2.5, [[]]),
    }
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(original, protocol=protocol))
    source = files.SourceFile("x.pkl", "", ("https://example.org/x.pkl",))
    got = safe_pickle.unpickle(files.FoundFile(path, source, "test"), path.read_bytes())
    assert got.keys() == original.keys()
    for key in ("big_endian", "fortran", "bool", "empty", "scalar_0d"):
        # The same type and size; numpy's own loader may turn '>i4' into native '<i4'.
        assert got[key].dtype.newbyteorder("<") == original[key].dtype.newbyteorder("<")
        assert got[key].shape == original[key].shape
        np.testing.assert_array_equal(got[key], original[key])
        assert got[key].flags.writeable
    assert got["fortran"].flags.f_contiguous
    for a, b in zip(got["list_of_images"], original["list_of_images"]):
        np.testing.assert_array_equal(a, b)
    assert [type(v) for v in got["numpy_scalars"]] == [np.uint8, np.float64]
    assert got["numpy_scalars"] == [7, 0.25]
    assert got["plain"] == original["plain"]


@pytest.mark.parametrize("dtype", [
    [("a", "<i4"), ("b", "<f4")],  # structured, no object: numpy itself would load it
    "c16", "M8[s]", "U3", object,
])
def test_unpickle_refuses_arrays_that_are_not_plain_numbers(isolated, dtype):
    manual, data_dir = isolated
    (manual / "freyfaces.pkl").write_bytes(pickle.dumps([np.zeros(3, dtype=dtype)], protocol=2))
    with pytest.raises(D.UnsafeContentError, match="refusing numpy dtype") as e:
        build("frey_faces", manual, data_dir)
    assert str(manual / "freyfaces.pkl") in str(e.value) and FREY_URL in str(e.value)
    assert not leftovers(data_dir)


class _RunsCode:
    def __reduce__(self):
        return os.system, ("true",)


def test_unpickle_refuses_other_globals(isolated):
    manual, data_dir = isolated
    (manual / "histopathology.pkl").write_bytes(pickle.dumps({"training": _RunsCode()}))
    with pytest.raises(D.UnsafeContentError, match="refusing to load posix.system"):
        build("histopathology", manual, data_dir, small=True)


# ----------------------------------------------------------------------------- limits in-process

def test_oversize_plain_file_is_refused_unread(isolated):
    manual, data_dir = isolated
    (manual / "freyfaces.pkl").write_bytes(bytes(2 * FREY_PKL_BYTES + 1))
    with pytest.raises(D.SizeLimitError, match=f"holds more than {FREY_CAP}"):
        build("frey_faces", manual, data_dir)


def test_size_limit_can_be_raised(isolated, monkeypatch):
    manual, data_dir = isolated
    (manual / "freyfaces.pkl").write_bytes(gzip.compress(bytes(10_000_000), 1))
    with pytest.raises(D.SizeLimitError, match=FREY_CAP):
        build("frey_faces", manual, data_dir)
    monkeypatch.setenv("TFVAMP_MAX_DECOMPRESSED_MB", "50")
    with pytest.raises(D.CorruptFileError) as e:  # now read whole: zeros are no pickle
        build("frey_faces", manual, data_dir)
    assert not isinstance(e.value, D.SizeLimitError)


def test_download_stops_at_the_limit(isolated, monkeypatch, tmp_path):
    manual, data_dir = isolated
    monkeypatch.setenv("TFVAMP_OFFLINE", "0")
    big = tmp_path / "served.pkl"
    big.write_bytes(bytes(2 * FREY_PKL_BYTES + (2 << 20)))
    (src,) = D.TfvampFreyFaces.SOURCES
    monkeypatch.setattr(D.TfvampFreyFaces, "SOURCES", (dataclasses.replace(src, urls=(big.as_uri(),)),))
    with pytest.raises(D.MissingFileError, match=f"sent more than {FREY_CAP}"):
        build("frey_faces", manual, data_dir)
    assert not list((data_dir / "downloads").rglob("freyfaces.pkl*"))  # neither file nor .part


# ----------------------------------------------------------------------------- checksums and URLs

def _staged(shared, rel):
    raw = (shared / rel).read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def test_byte_checksums_are_those_of_the_staged_originals(shared_data):
    listed = {}
    for line in (shared_data / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split()
        listed[rel.removeprefix("./")] = digest
    for cls in D.BUILDERS.values():
        for source in cls.SOURCES:
            rel = next((r for r in listed if Path(r).name in source.candidate_names()), None)
            if rel is None:  # OMNIGLOT, histopathology: not staged
                assert source.git_blob and not source.sha256
                continue
            if rel.endswith(".amat.gz"):  # re-gzipped by the stager: the text inside is the original
                assert hashlib.sha256(_staged(shared_data, rel)).hexdigest() in source.sha256
            else:
                assert listed[rel] in source.sha256, rel


def test_git_blob_id_is_gits(shared_data, tmp_path):
    # The ids the shared README lists for two staged originals, and git's own computation.
    assert files.git_blob_id((shared_data / "Freyfaces/freyfaces.pkl").read_bytes()) == \
        "032cd9c159728cd43e28041eb2bc547d278c3b80"
    caltech = shared_data / "Caltech101Silhouettes/caltech101_silhouettes_28_split1.mat"
    assert files.git_blob_id(caltech.read_bytes()) == "8ea37b184047d287dc6fe21ef76a174522d5a156"
    odd = tmp_path / "odd"
    odd.write_bytes(b"\0blob 3\0\r\n")
    assert files.git_blob_id(odd.read_bytes()) == git_hash_object(odd)


def test_size_limits_are_generous_but_bounded(shared_data):
    for cls in D.BUILDERS.values():
        for source in cls.SOURCES:
            path = next((p for n in source.candidate_names() for p in shared_data.rglob(n)), None)
            if path is None:
                continue
            if path.suffix == ".mat":  # the limit also covers its inflated variables
                size = sum(np.asarray(v).nbytes for k, v in scipy.io.loadmat(path).items()
                           if not k.startswith("__"))
            else:
                size = len(_staged(shared_data, path.relative_to(shared_data)))
            assert size <= source.max_size <= 3 * size, (source.name, size, source.max_size)


def test_urls_are_https_where_the_host_serves_it():
    http_only = {"yann.lecun.com"}
    for cls in D.BUILDERS.values():
        for source in cls.SOURCES:
            assert source.urls[0].startswith("https://"), source.urls[0]
            for url in source.urls:
                assert url.startswith("https://") or urlparse(url).hostname in http_only, url


def _small_histopathology(n=(3, 2, 2)):
    rng = np.random.default_rng(2)
    return {k: rng.random((m, 28, 28)) for k, m in zip(("training", "validation", "test"), n)}


def test_histopathology_under_its_original_name_must_be_the_original(isolated, monkeypatch):
    manual, data_dir = isolated
    monkeypatch.setattr(D.TfvampHistopathology, "SIZES", {"train": 3, "validation": 2, "test": 2})
    path = manual / "HistopathologyGray" / "histopathology.pkl.tar.gz"
    path.parent.mkdir()
    path.write_bytes(tar_gz("histopathology.pkl", histopathology_pickle(_small_histopathology())))
    with pytest.raises(D.ChecksumError, match="git blob id 40e100f65969") as e:
        build("histopathology", manual, data_dir)
    assert str(path) in str(e.value) and "TFVAMP_SKIP_CHECKSUMS" in str(e.value)
    assert not leftovers(data_dir)
    # The same check accepts the bytes it names: pretend this file were the original.
    (src,) = D.TfvampHistopathology.SOURCES
    monkeypatch.setattr(D.TfvampHistopathology, "SOURCES",
                        (dataclasses.replace(src, git_blob=git_hash_object(path)),))
    assert build("histopathology", manual, data_dir).info.splits["train"].num_examples == 3


def test_omniglot_under_its_original_name_must_be_the_original(isolated):
    # The paper's sizes, as zeros: right shapes and values, not the original bytes.
    manual, data_dir = isolated
    path = manual / "OMNIGLOT" / "chardata.mat"
    path.parent.mkdir()
    scipy.io.savemat(path, {"data": np.zeros((784, 24345), np.float32),
                            "testdata": np.zeros((784, 8070), np.float32)}, do_compression=True)
    with pytest.raises(D.ChecksumError, match="git blob id 016a3536ffe5") as e:
        build("omniglot", manual, data_dir)
    assert str(path) in str(e.value) and "TFVAMP_SKIP_CHECKSUMS" in str(e.value)
    assert not leftovers(data_dir)


# ----------------------------------------------------------------------------- content checks

@pytest.mark.parametrize("bad, expected", [
    (lambda s: {k: (v * 255).astype(np.uint8) for k, v in s.items()},
     "holds uint8 data in `training`, expected floating-point grey values in [0, 1]"),
    (lambda s: {**s, "validation": ["not", "an", "image"]},
     "in `validation`, expected floating-point grey values"),
    (lambda s: {**s, "test": [np.full((28, 28), np.nan)] * 2},
     "has values outside [0, 1] in `test`"),
    (lambda s: {**s, "training": {"a": 1}},
     "holds a dict as `training`, expected an array or a list of 28x28 images"),
])
def test_histopathology_content_is_checked(isolated, bad, expected):
    manual, data_dir = isolated
    splits = bad(_small_histopathology())
    raw = pickle.dumps({k: v if isinstance(v, (list, dict)) else list(v) for k, v in splits.items()})
    (manual / "histopathology.pkl").write_bytes(raw)
    with pytest.raises(D.ShapeError) as e:
        build("histopathology", manual, data_dir, small=True)
    assert expected in str(e.value) and str(manual / "histopathology.pkl") in str(e.value)
    assert not leftovers(data_dir)


def test_omniglot_integer_data_is_refused(isolated):
    manual, data_dir = isolated
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"data": np.ones((784, 6), np.uint8), "testdata": np.ones((784, 3), np.uint8)})
    (manual / "chardata.mat").write_bytes(buf.getvalue())
    with pytest.raises(D.ShapeError, match="holds uint8 data in `data`, expected floating-point"):
        build("omniglot", manual, data_dir, small=True)
