"""tfvamp: variational auto-encoders with a VampPrior on TensorFlow 2.

Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018.
"""
__version__ = "0.1.0"
