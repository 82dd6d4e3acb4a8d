"""The paper's published test log-likelihoods (Tomczak & Welling, AISTATS 2018), for reports
beside tfvamp's own (scripts/report.py). See docs/paper_details.md section 8.

    from tfvamp import paper
    paper.published("static_mnist", "hvae", "vampprior")     # -83.19

Nats per image (higher is better); Frey Faces and histopathology in bits per dimension (lower is better).
"""

# Table 1: (dataset, model, prior) -> test log-likelihood, every cell (docs/paper_details.md section 8).
_COLUMNS = ("static_mnist", "dynamic_mnist", "omniglot", "caltech101_silhouettes", "frey_faces", "histopathology")
_ROWS = {  # (model, prior): one value per dataset of _COLUMNS
    ("vae", "standard"): (-88.56, -84.50, -108.50, -123.43, 4.63, 6.07),
    ("vae", "vampprior"): (-85.57, -82.38, -104.75, -108.24, 4.57, 6.04),
    ("hvae", "standard"): (-86.05, -82.42, -103.52, -112.08, 4.61, 5.82),
    ("hvae", "vampprior"): (-83.19, -81.24, -101.18, -108.28, 4.51, 5.75),
    ("convhvae", "standard"): (-82.41, -80.40, -97.65, -106.35, 4.49, 5.59),
    ("convhvae", "vampprior"): (-81.09, -79.75, -97.56, -104.22, 4.45, 5.49),
    ("pixelhvae", "standard"): (-80.11, -79.70, -90.11, -85.51, 4.43, 4.84),
    ("pixelhvae", "vampprior"): (-79.78, -78.45, -89.76, -86.22, 4.38, 4.53),
}
TABLE_1 = {(dataset, model, prior): value for (model, prior), values in _ROWS.items()
           for dataset, value in zip(_COLUMNS, values)}
# Table 2: the HVAE on static MNIST with other priors.
TABLE_2 = {("static_mnist", "hvae", "mog"): -85.07, ("static_mnist", "hvae", "vampprior_data"): -85.71}


def published(dataset, model, prior):
    """The paper's test log-likelihood for a run's (dataset, model, prior), or None if it has none."""
    key = (dataset, model, prior)
    return TABLE_1.get(key, TABLE_2.get(key))
