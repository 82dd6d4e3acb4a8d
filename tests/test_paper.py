"""tfvamp.paper's Table 1 against the table users read in docs/paper_details.md section 8."""
import os
import re

from tfvamp import paper

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "paper_details.md")
COLUMNS = ("static_mnist", "dynamic_mnist", "omniglot", "caltech101_silhouettes", "frey_faces", "histopathology")
ROWS = {"VAE": "vae", "HVAE": "hvae", "convHVAE": "convhvae", "PixelHVAE": "pixelhvae"}
PRIORS = {"standard": "standard", "VampPrior": "vampprior"}


def _doc_table():
    with open(DOC) as f:
        text = f.read()
    section = text[text.index("## 8. Published numbers"):]
    cells = {}
    for line in section.splitlines():
        match = re.match(r"\| (\w+) \+ (\w+) \|(.*)\|$", line)
        if match and match.group(1) in ROWS:
            values = [float(v.replace("V", "").strip()) for v in match.group(3).split("|")]
            for dataset, value in zip(COLUMNS, values):
                cells[(dataset, ROWS[match.group(1)], PRIORS[match.group(2)])] = value
    return cells


def test_every_cell_of_the_documented_table_is_what_reports_compare_against():
    cells = _doc_table()
    assert len(cells) == 48
    for key, value in cells.items():
        assert paper.published(*key) == value, key


def test_cells_the_paper_has_no_number_for_give_none():
    assert paper.published("static_mnist", "vae", "mog") is None
    assert paper.published("folder:/tmp/x", "vae", "vampprior") is None
    assert paper.published("static_mnist", "hvae", "mog") == -85.07
