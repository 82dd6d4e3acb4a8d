"""The paper's published test log-likelihoods (Tomczak & Welling, AISTATS 2018), for reports
beside tfvamp's own (scripts/report.py). See docs/paper_details.md section 8.

    from tfvamp import paper
    paper.published("static_mnist", "hvae", "vampprior")     # -83.19

Nats per image (higher is better); Frey Faces in bits per dimension (lower is better).
"""

# Table 1: (dataset, model, prior) -> test log-likelihood.
TABLE_1 = {
    ("static_mnist", "vae", "standard"): -88.56, ("static_mnist", "vae", "vampprior"): -85.57,
    ("static_mnist", "hvae", "standard"): -86.05, ("static_mnist", "hvae", "vampprior"): -83.19,
    ("dynamic_mnist", "vae", "standard"): -84.50, ("dynamic_mnist", "vae", "vampprior"): -82.38,
    ("dynamic_mnist", "hvae", "standard"): -82.42, ("dynamic_mnist", "hvae", "vampprior"): -81.24,
    ("frey_faces", "vae", "standard"): 4.63, ("frey_faces", "vae", "vampprior"): 4.57,
    ("frey_faces", "hvae", "standard"): 4.61, ("frey_faces", "hvae", "vampprior"): 4.51,
}
# Table 2: the HVAE on static MNIST with other priors.
TABLE_2 = {("static_mnist", "hvae", "mog"): -85.07, ("static_mnist", "hvae", "vampprior_data"): -85.71}


def published(dataset, model, prior):
    """The paper's test log-likelihood for a run's (dataset, model, prior), or None if it has none."""
    key = (dataset, model, prior)
    return TABLE_1.get(key, TABLE_2.get(key))
