"""Errors raised while finding, reading and checking the original data files.

Every message names the file, where it was looked for or found, the original URL
and the fix, so a user never has to read a traceback from inside TFDS.
"""


class DataError(Exception):
    """A data file is missing, unreadable or not the original file."""


class MissingFileError(DataError):
    """The original file is in none of the searched folders and could not be downloaded."""


class CorruptFileError(DataError):
    """The file exists but is truncated, corrupt or in the wrong format."""


class SizeLimitError(CorruptFileError):
    """The file is, or expands to, more bytes than the original could (e.g. a decompression bomb)."""


class UnsafeContentError(CorruptFileError):
    """The file holds something a data file never needs and that is refused unread (e.g. a pickle
    with a structured or object numpy dtype)."""


class ShapeError(DataError):
    """The file parses, but holds arrays of the wrong shape, count or value range."""


class ChecksumError(DataError):
    """The file's bytes, or its decoded arrays, differ from the original's known checksum."""
