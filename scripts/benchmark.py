#!/usr/bin/env python
"""Speed of training and evaluation: `tfvamp.cli.benchmark` (also the console script `tfvamp-benchmark`).

    python scripts/benchmark.py                        # the grid of docs/benchmarks.md
    python scripts/benchmark.py --quick                # a smoke test (a minute)
"""
from tfvamp.cli.benchmark import main

if __name__ == "__main__":
    main()
