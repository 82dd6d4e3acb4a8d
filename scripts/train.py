#!/usr/bin/env python
"""Trains a VAE with a VampPrior: `tfvamp.cli.train` (also the console script `tfvamp-train`).

    python scripts/train.py --flagfile configs/frey.cfg
    python scripts/train.py --flagfile configs/frey.cfg --flagfile configs/quick.cfg     # into runs/quick/...

All flags: tfvamp/flags.py, or --helpfull.
"""
from tfvamp.cli.train import main

if __name__ == "__main__":
    main()
