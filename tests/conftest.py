"""Shared test set-up: a small TF footprint and the data folder beside the project."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
if os.path.isdir(_SHARED_DATA):
    os.environ.setdefault("TFVAMP_MANUAL_DIR", _SHARED_DATA)
