#!/usr/bin/env python
"""Paired comparison of two evaluated runs: `tfvamp.cli.compare_runs` (also `tfvamp-compare-runs`).

    python scripts/compare_runs.py runs/frey_float32 runs/frey_mixed [--split test]
"""
from tfvamp.cli.compare_runs import main

if __name__ == "__main__":
    main()
