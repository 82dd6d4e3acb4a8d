"""The restricted unpickler: a data pickle yields lists, dicts, tuples, numbers, strings and
plain numeric numpy arrays, and nothing in it runs (docs/data.md, "Hostile files").
"""
from __future__ import annotations

import io
import math
import pickle
import re

import numpy as np

from tfvamp.datasets.errors import CorruptFileError, UnsafeContentError
from tfvamp.datasets.files import FoundFile

# numpy's own unpickling trusts the file. A dtype's __setstate__ accepts any fields, and an
# array's __setstate__ lays such a dtype, e.g. a void type with an object field, over raw bytes
# from the file: reading the array then dereferences pointers the file chose (a segmentation
# fault, or worse). So the globals a numpy pickle names are replaced by stand-ins that only
# *record* what the pickle asks for. `_materialize` then checks every record and builds the
# arrays with np.frombuffer, of plain bool / integer / float dtypes only: numpy never sees a
# dtype or array state taken from the file, and no element is read before the check.

# Only these type strings are accepted (numpy pickles a plain dtype as e.g. 'u1', 'f4', 'f8').
_PLAIN_DTYPE = re.compile(r"[<>|=]?(b1|[iu][1248]|f(2|4|8|12|16))")
_MAX_DEPTH = 100  # lists in lists...; real data files nest two or three levels


class _Refused(pickle.UnpicklingError):
    """Something a data file never needs; refused before any numpy array exists."""


def _plain_dtype(spec) -> np.dtype:
    """The numpy dtype named by `spec`, if it is a plain bool, integer or float type."""
    if isinstance(spec, bytes):
        spec = spec.decode("latin1")
    if not isinstance(spec, str) or not _PLAIN_DTYPE.fullmatch(spec):
        raise _Refused(f"refusing numpy dtype {spec!r:.60}: not a plain bool, integer or float type")
    dtype = np.dtype(spec)
    # The rule itself, in case the pattern above is ever widened.
    if (dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None
            or dtype.hasobject):
        raise _Refused(f"refusing numpy dtype {dtype}: not a plain bool, integer or float type")
    return dtype


class _DtypeRecord:
    """Stands in for `numpy.dtype(spec, align, copy)`; its pickled state may set the byte order only."""

    dtype = None
    _state_set = False

    def __init__(self, spec, align=False, copy=True):  # pylint: disable=unused-argument
        self.dtype = _plain_dtype(spec)

    def __setstate__(self, state):
        """numpy's state: (3 or 4, byte order, subarray, names, fields, -1, -1, flags[, metadata]).

        A subarray, names, fields or metadata would turn the plain type into a structured one
        (this is how a forged pickle gives a harmless-looking dtype an object field).
        """
        if self.dtype is None or self._state_set:
            raise _Refused("refusing a numpy dtype state given twice or without a dtype")
        self._state_set = True
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)):
            raise _Refused(f"refusing numpy dtype state {state!r:.80}")
        order = state[1]
        if (order not in ("<", ">", "|", "=") or any(v is not None for v in state[2:5] + state[8:])
                or state[5:7] != (-1, -1)):
            raise _Refused(f"refusing numpy dtype state {state!r:.120}: it gives the plain type "
                           f"{self.dtype} a byte order, fields, subarray, size or metadata it "
                           f"cannot have")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


class _ArrayRecord:
    """Stands in for a numpy array while unpickling: records shape, dtype and bytes only."""

    shape = dtype = data = None
    fortran = False
    scalar = False
    _state_set = False

    def __setstate__(self, state):
        """numpy's array state: (1, shape, dtype, is_fortran, data), or the same without the 1."""
        if self._state_set:
            raise _Refused("refusing an array state given twice")
        self._state_set = True
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise _Refused(f"refusing numpy array state {state!r:.80}")
        self.shape, self.dtype, self.fortran, self.data = state

    def build(self):
        """The checked array (or numpy scalar); every check comes before numpy sees the bytes."""
        if not isinstance(self.dtype, _DtypeRecord) or self.dtype.dtype is None:
            raise _Refused(f"refusing an array whose dtype is a {type(self.dtype).__name__}")
        dtype, shape, data = self.dtype.dtype, self.shape, self.data
        if not (isinstance(shape, tuple) and len(shape) <= 32
                and all(type(n) is int and n >= 0 for n in shape)):  # noqa: E721  (no bools)
            raise _Refused(f"refusing array shape {shape!r:.80}")
        if isinstance(data, str):  # a Python 2 byte string, decoded as latin1
            data = data.encode("latin1")
        if not isinstance(data, (bytes, bytearray)):
            raise _Refused(f"refusing array data of type {type(data).__name__} (only raw bytes)")
        if len(data) != math.prod(shape) * dtype.itemsize:
            raise _Refused(f"array data of {len(data)} bytes does not fit shape {shape} of {dtype}")
        array = np.frombuffer(data, dtype).reshape(shape, order="F" if self.fortran else "C")
        return array[()] if self.scalar else array.copy(order="K")  # writable, like pickle's


class _NdarrayName:
    """What `numpy.ndarray` means in a data pickle: only the first argument of _reconstruct."""

    __slots__ = ()


_NDARRAY = _NdarrayName()


def _reconstruct(cls, shape, typecode):  # pylint: disable=unused-argument
    """Stands in for numpy's `_reconstruct(ndarray, (0,), b'b')`; the state comes via BUILD."""
    if cls is not _NDARRAY:
        raise _Refused("refusing an array of a class other than numpy.ndarray")
    return _ArrayRecord()


def _frombuffer(buf, dtype, shape, order):
    """Stands in for numpy's `_frombuffer` (pickle protocol 5, data in-band)."""
    record = _ArrayRecord()
    record.__setstate__((1, tuple(shape) if isinstance(shape, list) else shape, dtype,
                         order == "F", buf))
    return record


def _scalar(dtype, data):
    """Stands in for numpy's `scalar(dtype, bytes)` (a pickled numpy scalar)."""
    record = _frombuffer(data, dtype, (), "C")
    record.scalar = True
    return record


def _empty_bytes(*args):
    """Stands in for `bytes()`, how protocols < 3 store b"" (e.g. an empty array's data).

    Only without arguments: bytes(10**10) would allocate 10 GB.
    """
    if args:
        raise _Refused("refusing bytes(...) with arguments")
    return b""


def _latin1_encode(text, encoding="latin1"):
    """Stands in for `_codecs.encode(str, 'latin1')`: how protocols < 3 store bytes, nothing else."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise _Refused(f"refusing _codecs.encode with {encoding!r:.20}")
    return text.encode("latin1")


class _RecordingUnpickler(pickle.Unpickler):
    """Unpickles lists, dicts, tuples, numbers, strings and records of numpy arrays: no code runs."""

    _STAND_INS = {
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "scalar"): _scalar,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,  # numpy arrays, pickle protocol 5
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _DtypeRecord,
        ("_codecs", "encode"): _latin1_encode,  # bytes in Python 3 pickles of protocol < 3
        ("builtins", "bytes"): _empty_bytes,  # b"" in the same
        ("builtins", "list"): list, ("builtins", "dict"): dict, ("builtins", "tuple"): tuple,
    }

    def find_class(self, module, name):
        if module.startswith("numpy.core"):  # pickles from numpy 1.x (and Python 2)
            module = "numpy._core" + module[len("numpy.core"):]
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        try:
            return self._STAND_INS[(module, name)]
        except KeyError:
            raise _Refused(f"refusing to load {module}.{name} from a data file") from None


_LEAVES = (str, bytes, bytearray, int, float, complex, type(None))


def _materialize(obj, depth=0, done=None):
    """`obj` with each array record replaced by its checked array; _Refused for anything odd."""
    done = {} if done is None else done
    if isinstance(obj, _LEAVES):
        return obj
    if id(obj) in done:  # shared or self-referencing parts (pickle memo)
        return done[id(obj)]
    if depth > _MAX_DEPTH:
        raise _Refused(f"refusing a pickle nested more than {_MAX_DEPTH} levels deep")
    if isinstance(obj, _ArrayRecord):
        done[id(obj)] = obj.build()
    elif isinstance(obj, list):
        done[id(obj)] = obj
        obj[:] = [_materialize(v, depth + 1, done) for v in obj]
    elif isinstance(obj, dict):
        done[id(obj)] = obj
        if not all(isinstance(k, _LEAVES) for k in obj):
            raise _Refused("refusing a dict with keys other than strings or numbers")
        for k, v in list(obj.items()):
            obj[k] = _materialize(v, depth + 1, done)
    elif isinstance(obj, tuple):
        done[id(obj)] = tuple(_materialize(v, depth + 1, done) for v in obj)
    else:
        raise _Refused(f"refusing a {type(obj).__name__} object in a data file")
    return done[id(obj)]


def unpickle(found: FoundFile, raw: bytes):
    """A Python 2 or 3 pickle of lists/dicts/tuples/numbers/strings and plain numpy arrays.

    Python 2 strings are decoded as latin1 (the only way Python 3 reads those array bytes).
    """
    try:
        return _materialize(_RecordingUnpickler(io.BytesIO(raw), encoding="latin1").load())
    except _Refused as e:
        found.fail(UnsafeContentError,
                   f"is not a plain data pickle: {e}. Nothing in it was run and no array was "
                   f"built; a data file holds only lists, dicts and arrays of plain numbers, so "
                   f"this one is damaged or forged")
    except Exception as e:  # noqa: BLE001  EOFError, UnpicklingError, ValueError, ...
        found.fail(CorruptFileError, f"is truncated or not the expected pickle ({type(e).__name__}: {e})")
