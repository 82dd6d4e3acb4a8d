#!/usr/bin/env python
"""Prepares the TFDS datasets ahead of time: `tfvamp.cli.prepare_data` (also `tfvamp-prepare-data`).

    python scripts/prepare_data.py --manual_dir=/path/to/originals [--data_dir=...]
"""
from tfvamp.cli.prepare_data import main

if __name__ == "__main__":
    main()
