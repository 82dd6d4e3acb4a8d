#!/usr/bin/env python
"""Samples from an exported model with TensorFlow alone: tfvamp/cli/sample.py (also the console
script `tfvamp-sample`).

    python scripts/sample.py --saved_model saved_models/mnist_hvae_vamp --num_samples 64 \
        --output samples.png [--seed 0] [--output_npy samples.npy]

The module is loaded from its file, not imported as part of the tfvamp package: this command
imports nothing of tfvamp, as a process that only serves an export would.
"""
import importlib.util
import os
import sys


def _load():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tfvamp", "cli", "sample.py")
    spec = importlib.util.spec_from_file_location("tfvamp_cli_sample", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # absl finds its flags' module
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    _load().main()
