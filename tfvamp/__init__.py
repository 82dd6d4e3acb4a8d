"""tfvamp: variational auto-encoders with a VampPrior on TensorFlow 2.

Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018.

    import tfvamp
    model = tfvamp.build_model("hvae", "vampprior", (28, 28, 1), "bernoulli")
    terms = model.loss_terms(images, beta=1.0)       # per-example loss, reconstruction, kl
    ll = model.log_likelihood(images, num_samples=5000)
"""
from tfvamp.likelihoods import LIKELIHOODS
from tfvamp.models import MODELS, ConvHVAE, HVAE, PixelHVAE, VAE, build_model
from tfvamp.priors import PRIORS

__version__ = "0.1.0"
__all__ = ["build_model", "VAE", "HVAE", "ConvHVAE", "PixelHVAE", "MODELS", "PRIORS", "LIKELIHOODS"]
