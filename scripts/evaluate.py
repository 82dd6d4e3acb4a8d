#!/usr/bin/env python
"""Evaluates a trained run: `tfvamp.cli.evaluate` (also the console script `tfvamp-evaluate`).

    python scripts/evaluate.py --model_dir runs/mnist_hvae_vamp [--split test] [--eval_samples 5000]
"""
from tfvamp.cli.evaluate import main

if __name__ == "__main__":
    main()
