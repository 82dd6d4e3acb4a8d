"""How the networks' weights start: the official release's initialisation, or Keras'.

`init="release"` (the default) is what the PyTorch release does, layer type by layer type
(its models/*.py and utils/nn.py):

| layer (tfvamp)                                   | release                  | kernel                                | bias                      |
|--------------------------------------------------|--------------------------|---------------------------------------|---------------------------|
| `GatedDense` (both halves), `GaussianHead`, dense `ImageHead` | `nn.Linear` + `he_init` | N(0, 2 / fan_in), untruncated     | U(-1/sqrt(fan_in), +1/sqrt(fan_in)) |
| `GatedConv2D` (both halves), 1x1 conv `ImageHead` | `nn.Conv2d`, PyTorch's default | U(-1/sqrt(fan_in), +1/sqrt(fan_in)) | U(-1/sqrt(fan_in), +1/sqrt(fan_in)) |
| `MaskedConv2D` (PixelCNN)                        | `nn.Conv2d`, default, no bias | U(-1/sqrt(fan_in), +1/sqrt(fan_in)) | none                |

fan_in is the kernel's inputs: `in_features` for a dense kernel, `in_channels * k * k` for a
convolution (masked ones included: PyTorch draws the whole kernel, then masks it). PyTorch's
default is kaiming-uniform with a = sqrt(5), i.e. a bound of 1/sqrt(fan_in). PixelHVAE's
discretized-logistic heads have no bias in the release; there the bias starts at zero.
The pseudo-inputs start from N(mean, std) either way (`tfvamp.priors`).

`init="keras"` is Keras' truncated He normal on every kernel (same variance as He et al.'s)
and zero biases: what tfvamp did before `release` (runs without an `init` in their config.json
were made with it and resume with it).

Every initializer here is unseeded: `keras.utils.set_random_seed` (the training loop's --seed)
makes them repeatable.
"""
import math

import keras

INITS = ("release", "keras")
DEFAULT = "release"
LEGACY = "keras"  # what a config without an `init` entry was made with


def check_init(init):
    """`init` if it is one of INITS, else a ValueError naming the choices."""
    if init not in INITS:
        raise ValueError(f"init: unknown initialisation {init!r}; choose one of {', '.join(INITS)}.")
    return init


def fan_in(shape):
    """Inputs per output unit of a kernel: `[in, out]` -> in; `[k, k, in, out]` -> k * k * in."""
    return int(math.prod(shape[:-1]))


def _he_normal_untruncated():
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_in", distribution="untruncated_normal")


def _torch_default_uniform():
    # kaiming_uniform(a=sqrt(5)): bound = sqrt(6 / ((1 + a^2) fan_in)) = 1 / sqrt(fan_in) = sqrt(3 * (1/3) / fan_in).
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def kernel(init, kind):
    """The kernel initializer of a layer of `kind` ('dense' or 'conv') under `init`."""
    check_init(init)
    if init == "keras":
        return keras.initializers.HeNormal()
    if kind == "dense":
        return _he_normal_untruncated()
    if kind == "conv":
        return _torch_default_uniform()
    raise ValueError(f"kind must be 'dense' or 'conv', got {kind!r}.")


def bias(init, kernel_shape, present_in_release=True):
    """The bias initializer under `init`, for a layer whose kernel has `kernel_shape`.

    release: PyTorch's default U(-1/sqrt(fan_in), +1/sqrt(fan_in)), or zeros where the release's
    layer has no bias (`present_in_release=False`); keras: zeros.
    """
    check_init(init)
    if init == "keras" or not present_in_release:
        return keras.initializers.Zeros()
    bound = 1.0 / math.sqrt(fan_in(kernel_shape))
    return keras.initializers.RandomUniform(-bound, bound)
