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


class ShapeError(DataError):
    """The file parses, but holds arrays of the wrong shape, count or value range."""


class ChecksumError(DataError):
    """The file parses with the right shapes, but its content differs from the original."""
