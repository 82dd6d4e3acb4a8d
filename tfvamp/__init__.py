"""tfvamp: variational auto-encoders with a VampPrior on TensorFlow 2.

Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018.

    import tfvamp
    model = tfvamp.build_model("hvae", "vampprior", (28, 28, 1), "bernoulli")
    terms = model.loss_terms(images, beta=1.0)       # per-example loss, reconstruction, kl
    ll = model.log_likelihood(images, num_samples=5000)

Importing tfvamp sets TensorFlow's C++ log level to warnings and errors
(`TF_CPP_MIN_LOG_LEVEL=2`) unless it is set already, so that the import prints nothing.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvamp.likelihoods import LIKELIHOODS  # noqa: E402
from tfvamp.models import MODELS, ConvHVAE, HVAE, PixelHVAE, VAE, build_model  # noqa: E402
from tfvamp.optimizers import AdamNormGrad  # noqa: E402
from tfvamp.pretrained import load_pretrained  # noqa: E402
from tfvamp.priors import PRIORS  # noqa: E402
from tfvamp.training import WarmUp  # noqa: E402

__version__ = "0.1.0"
__all__ = ["build_model", "load_pretrained", "VAE", "HVAE", "ConvHVAE", "PixelHVAE", "AdamNormGrad", "WarmUp",
           "MODELS", "PRIORS", "LIKELIHOODS"]
