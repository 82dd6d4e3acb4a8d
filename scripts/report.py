#!/usr/bin/env python
"""Tables of finished runs beside the paper's numbers: `tfvamp.cli.report` (also `tfvamp-report`).

    python scripts/report.py runs/budget/*                         # the reduced-budget table
    python scripts/report.py --paper_budget runs/paper_budget/*    # the JSON records, curves.png and the table
"""
from tfvamp.cli.report import main

if __name__ == "__main__":
    main()
