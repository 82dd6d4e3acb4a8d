#!/usr/bin/env python
"""Exports a trained run as a SavedModel: `tfvamp.cli.export` (also the console script `tfvamp-export`).

    python scripts/export.py --model_dir runs/mnist_hvae_vamp [--export_dir saved_models/mnist_hvae_vamp]
"""
from tfvamp.cli.export import main

if __name__ == "__main__":
    main()
