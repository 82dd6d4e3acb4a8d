"""Keras 3 building blocks of the paper's networks.

* `GatedDense`: h = Linear(x) * sigmoid(Linear_gate(x)) (Dauphin et al. 2017), the only
  non-linearity of the MLP models.
* `GatedConv2D`: the same gate on a convolution, with the release's explicit symmetric padding.
* `MaskedConv2D`: PixelCNN masks 'A' (excludes the centre pixel) and 'B' (includes it), with
  colour groups (R before G before B within a pixel) for images of any number of channels;
  `pixelcnn_head_mask` masks the 1x1 output head to match.

All layers take and return float tensors; shapes are in the docstrings.

Precision. Variables are float32; a layer computes in its Keras compute dtype (`float32`, or
`bfloat16` under the `mixed_bfloat16` policy that `tfvamp.precision` gives it). The casts are
explicit (`autocast=False`, on the layers and on their weights, which therefore read as float32
inside `call` too): `forward(x, dtype)` runs the same weights in any dtype, which is
how a model runs its encoder over the pseudo-inputs in float32 while the data's pass is
bfloat16 (`tfvamp.precision`, part `prior_encoder`).
"""
import keras
import numpy as np
import tensorflow as tf

from tfvamp import initializers


def matmul(x, kernel, dtype, float32_weight_gradient=False):
    """`x @ kernel` computed in `dtype` (x `[N, F]` any float dtype, kernel the float32 `[F, U]`),
    returned in `dtype`.

    `float32_weight_gradient` (bfloat16 only): the kernel's gradient x^T dy is computed by a
    float32 matmul of the bfloat16 x and dy, and not rounded to bfloat16 (the input gradient
    stays bfloat16). Part `weight_gradients` of `tfvamp.precision`.
    """
    dtype = tf.as_dtype(dtype)
    if not float32_weight_gradient or dtype == tf.float32:
        return tf.matmul(tf.cast(x, dtype), tf.cast(kernel, dtype))
    # A tensor, not the variable: the custom gradient then sees no variable inside.
    return _matmul_float32_weight_gradient(tf.cast(x, dtype), tf.convert_to_tensor(kernel))


@tf.custom_gradient
def _matmul_float32_weight_gradient(x, kernel):
    low = tf.cast(kernel, x.dtype)

    def grad(dy):
        dx = tf.matmul(dy, low, transpose_b=True)
        dk = tf.matmul(tf.cast(x, tf.float32), tf.cast(dy, tf.float32), transpose_a=True)
        return dx, tf.cast(dk, kernel.dtype)

    return tf.matmul(x, low), grad


def hardtanh(x, low, high):
    """`clip(x, low, high)` (PyTorch's Hardtanh) with its gradient in one pass: `dy` where
    `low < x < high`, else 0. TensorFlow's `clip_by_value` gradient builds two zero-filled
    selects; on the pseudo-inputs (`[K, 784]`) that was 0.48 ms of a VAE step against 0.23
    here (2-core EPYC). x float32 or bfloat16, any shape; low < high Python floats."""
    low, high = float(low), float(high)
    if not low < high:
        raise ValueError(f"hardtanh needs low < high, got {low} and {high}.")
    scale = 6.0 / (high - low)  # Relu6Grad passes dy where 0 < features < 6, i.e. low < y < high

    @tf.custom_gradient
    def clip(x):
        y = tf.raw_ops.ClipByValue(t=x, clip_value_min=tf.constant(low, x.dtype),
                                   clip_value_max=tf.constant(high, x.dtype))

        def grad(dy):
            features = y * scale if low == 0.0 else (y - low) * scale  # one pass fewer on [0, 1]
            return tf.raw_ops.Relu6Grad(gradients=dy, features=features)

        return y, grad

    return clip(tf.convert_to_tensor(x))  # a tensor: no variable inside the custom gradient


@tf.custom_gradient
def _gated_product(a, z):
    """`a * sigmoid(z)` with its gradient written out: d a = g s, d z = g s (a - h). In bfloat16
    this replaces TensorFlow's SigmoidGrad, whose bfloat16 kernel is several times slower on the
    CPU than the element-wise products; the sigmoid itself stays fused into z's matmul. (The
    convolutions, whose sigmoid oneDNN does not fuse, take `gate` instead.)"""
    s = tf.sigmoid(z)
    h = a * s

    def grad(g):
        da = g * s
        return da, da * (a - h)

    return h, grad


def _explicit_casts(kwargs):
    """Layers here cast inputs and weights themselves (see the module docstring)."""
    kwargs.setdefault("autocast", False)
    return kwargs


@keras.saving.register_keras_serializable(package="tfvamp")
class GatedDense(keras.layers.Layer):
    """Gated dense layer: `Linear(x) * sigmoid(Linear_gate(x))`.

    The two maps are separate kernels, each followed directly by its bias, so that TensorFlow
    fuses matmul + bias (+ sigmoid) into one oneDNN call (faster than one kernel of width
    2 * units and a split: docs/benchmarks.md).

    Input `[..., in_features]` -> output `[..., units]`.
    """

    def __init__(self, units, float32_weight_gradients=False, init=initializers.DEFAULT, **kwargs):
        super().__init__(**_explicit_casts(kwargs))
        if int(units) < 1:
            raise ValueError(f"GatedDense needs units >= 1, got {units}.")
        self.units = int(units)
        self.float32_weight_gradients = bool(float32_weight_gradients)
        self.init = initializers.check_init(init)

    def build(self, input_shape):
        shape = (int(input_shape[-1]), self.units)
        for prefix in ("", "gate_"):  # kernel, bias, then the gate's: the checkpoint's order
            setattr(self, prefix + "kernel", self.add_weight(
                autocast=False, name=prefix + "kernel", shape=shape, initializer=initializers.kernel(self.init, "dense")))
            setattr(self, prefix + "bias", self.add_weight(
                autocast=False, name=prefix + "bias", shape=(self.units,), initializer=initializers.bias(self.init, shape)))

    def _linear(self, x, kernel, bias, dtype):
        if x.shape.rank == 2:
            h = matmul(x, kernel, dtype, self.float32_weight_gradients)
        else:
            h = tf.tensordot(tf.cast(x, dtype), tf.cast(kernel, dtype), 1)
        return tf.nn.bias_add(h, tf.cast(bias, dtype))

    def forward(self, x, dtype):
        """The layer computed in `dtype` (float32 or bfloat16), whatever its policy."""
        value = self._linear(x, self.kernel, self.bias, dtype)
        pre_gate = self._linear(x, self.gate_kernel, self.gate_bias, dtype)
        if value.dtype == tf.bfloat16:
            return _gated_product(value, pre_gate)
        return value * tf.sigmoid(pre_gate)

    def call(self, x):
        return self.forward(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "float32_weight_gradients": self.float32_weight_gradients, "init": self.init}


def _pad(x, padding):
    # A separate Pad and a 'VALID' convolution: conv2d's explicit padding was measured slower,
    # in training by far (its gradients leave oneDNN: a bfloat16 convHVAE step 1.0 -> 34 s).
    if padding == 0:
        return x
    return tf.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]])


def gate(z):
    """`sigmoid(z)` in `z`'s dtype: the gate of the gated layers.

    bfloat16 goes through float32: TensorFlow's bfloat16 Sigmoid kernel on the CPU runs about
    4x slower than the float32 one (12.6 against 3.2 ms on `[100, 32, 32, 64]`, 2-core EPYC),
    and oneDNN fuses no sigmoid into a convolution, so two casts (1.1 ms each) and the float32
    kernel win; the backward pass then runs float32's SigmoidGrad too. (A dense layer's sigmoid
    is fused into its matmul and stays as it is.)
    """
    if z.dtype == tf.bfloat16:
        return tf.cast(tf.sigmoid(tf.cast(z, tf.float32)), z.dtype)
    return tf.sigmoid(z)


@keras.saving.register_keras_serializable(package="tfvamp")
class GatedConv2D(keras.layers.Layer):
    """Gated convolution `Conv(x) * sigmoid(Conv_gate(x))`, NHWC.

    Padding is explicit and symmetric (`padding` pixels on every side, then a 'valid'
    convolution), as in the release, so that 28x28 -> 14x14 -> 7x7 with stride 2 lines up
    with the PyTorch networks exactly.

    Input `[B, H, W, C_in]` -> output `[B, H', W', filters]`,
    H' = floor((H + 2 * padding - kernel_size) / strides) + 1.
    """

    def __init__(self, filters, kernel_size, strides=1, padding=None, init=initializers.DEFAULT, **kwargs):
        super().__init__(**_explicit_casts(kwargs))
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.padding = (self.kernel_size // 2) if padding is None else int(padding)
        self.init = initializers.check_init(init)

    def build(self, input_shape):
        shape = (self.kernel_size, self.kernel_size, int(input_shape[-1]), self.filters)
        # Separate value and gate kernels, as in GatedDense (conv + bias fuse in oneDNN).
        for prefix in ("", "gate_"):
            setattr(self, prefix + "kernel", self.add_weight(
                autocast=False, name=prefix + "kernel", shape=shape, initializer=initializers.kernel(self.init, "conv")))
            setattr(self, prefix + "bias", self.add_weight(
                autocast=False, name=prefix + "bias", shape=(self.filters,), initializer=initializers.bias(self.init, shape)))

    def forward(self, x, dtype):
        """The layer computed in `dtype` (float32 or bfloat16), whatever its policy."""
        x = _pad(tf.cast(x, dtype), self.padding)

        def conv(kernel, bias):
            out = tf.nn.conv2d(x, tf.cast(kernel, dtype), self.strides, "VALID")
            return tf.nn.bias_add(out, tf.cast(bias, dtype))

        return conv(self.kernel, self.bias) * gate(conv(self.gate_kernel, self.gate_bias))

    def call(self, x):
        return self.forward(x, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "init": self.init}


def channel_groups(num_channels, num_groups):
    """The colour group of each channel, int `[num_channels]`: channel c of n is in group floor(c * G / n).

    Groups are contiguous in channel order and their sizes differ by at most one (n = 8,
    G = 3: [0 0 0 1 1 1 2 2]); for n divisible by G this is PixelCNN's split into G equal
    blocks, the features of R, then of G, then of B. Refuses n < G, which would leave a group
    with no channels (that group's outputs could then see nothing at their own pixel).
    """
    n, g = int(num_channels), int(num_groups)
    if g < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}.")
    if n < g:
        raise ValueError(f"{n} channels cannot fill {g} channel groups: "
                         "every group needs at least one channel.")
    return np.arange(n) * g // n


def pixelcnn_mask(kernel_size, mask_type, in_channels, out_channels, num_groups=1,
                  num_conditioning_channels=0):
    """The PixelCNN kernel mask `[k, k, in_channels, out_channels]` (float32, 0 or 1).

    Order of generation: pixels in raster order (rows top to bottom, left to right), and
    within a pixel channel group 0, then 1, ... (R, G, B for num_groups = 3; van den Oord et
    al. 2016, section 3.4). Taps strictly before the centre are fully connected, taps after it
    are zero. At the centre, input group g reaches output group h only if g < h (mask 'A',
    the first layer, whose input is the image) or g <= h (mask 'B', every later layer).

    Args:
      kernel_size: odd k.
      mask_type: 'A' or 'B'.
      in_channels: all input channels, the autoregressive ones first, then the conditioning ones.
      out_channels: output channels.
      num_groups: G; the autoregressive inputs and the outputs are each grouped by `channel_groups`.
      num_conditioning_channels: trailing inputs computed from the latents, not from the image.
        They belong to no group: for every output they follow the spatial mask alone, hidden
        at the centre under 'A' and visible under 'B'. With one group this is exactly the
        release's mask of [x, latent maps] (it masks both alike), so num_groups=1 gives the
        same array whatever this count.
    """
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}.")
    k, num_cond = int(kernel_size), int(num_conditioning_channels)
    if not 0 <= num_cond < in_channels:
        raise ValueError(f"num_conditioning_channels must be in [0, in_channels = {in_channels}), "
                         f"got {num_conditioning_channels}: the image channels come first.")
    in_groups = channel_groups(in_channels - num_cond, num_groups)
    out_groups = channel_groups(out_channels, num_groups)
    mask = np.zeros((k, k, in_channels, out_channels), np.float32)
    c = k // 2
    mask[:c] = 1.0  # rows above the centre
    mask[c, :c] = 1.0  # pixels left of the centre
    order = np.less if mask_type == "A" else np.less_equal
    mask[c, c, :len(in_groups)] = order(in_groups[:, None], out_groups[None, :])
    # The maps depend on z only, so the centre would be causal for them under 'A' too; it stays
    # hidden to keep the release's network: kernel entries under a mask are never trained, so
    # opening them would turn a checkpoint's untouched initial values into live weights.
    mask[c, c, len(in_groups):] = float(mask_type == "B")
    return mask


def pixelcnn_head_mask(in_channels, image_channels, num_params):
    """Mask 'B' `[in_channels, num_params * image_channels]` of a 1x1 output head's kernel.

    Columns are parameter-major, ImageHead's layout (it splits its output into num_params
    blocks of C): column p * C + c holds parameter p of image channel c. That column sees
    the hidden channels of groups <= c, hidden channels grouped by channel_groups(in_channels,
    C) as the outputs of the last MaskedConv2D(num_groups=C). This is
    pixelcnn_mask(1, 'B', in_channels, C * num_params, num_groups=C)[0, 0], whose columns are
    channel-major (c * num_params + p, so that each image channel's parameters fill its group),
    with the columns reordered.
    """
    c, p = int(image_channels), int(num_params)
    mask = pixelcnn_mask(1, "B", in_channels, c * p, num_groups=c)[0, 0]
    return mask.reshape(in_channels, c, p).transpose(0, 2, 1).reshape(in_channels, p * c)


@keras.saving.register_keras_serializable(package="tfvamp")
class MaskedConv2D(keras.layers.Layer):
    """PixelCNN masked convolution, 'same' size output, NHWC.

    The output at pixel (i, j) depends only on input pixels before (i, j) in raster order
    (mask 'A') or at and before it (mask 'B'); with num_groups = G, at (i, j) itself output
    group h sees only input groups g < h ('A') or g <= h ('B'), see `pixelcnn_mask`. A chain
    of one 'A' layer, then 'B' layers, then a 1x1 'B' head (`pixelcnn_head_mask`, or this
    layer with kernel_size=1 and channel-major outputs) makes image channel c at a pixel
    depend on the earlier pixels and on channels < c of that pixel only. No bias by default,
    as in the release (a batch norm follows every masked conv).

    Input `[B, H, W, C_in]` (the image's channels first, then num_conditioning_channels
    latent maps) -> output `[B, H, W, filters]`, channels grouped by `channel_groups`.
    """

    def __init__(self, mask_type, filters, kernel_size=3, use_bias=False, num_groups=1,
                 num_conditioning_channels=0, init=initializers.DEFAULT, **kwargs):
        super().__init__(**_explicit_casts(kwargs))
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}.")
        if int(kernel_size) % 2 != 1:
            raise ValueError(f"MaskedConv2D needs an odd kernel_size, got {kernel_size}.")
        self.mask_type = mask_type
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.use_bias = bool(use_bias)
        self.num_groups = int(num_groups)
        self.num_conditioning_channels = int(num_conditioning_channels)
        self.init = initializers.check_init(init)
        channel_groups(self.filters, self.num_groups)  # refuse bad groupings now, not at build

    def build(self, input_shape):
        c_in = int(input_shape[-1])
        # Built first so that a bad channel split fails before any weight is made.
        mask = pixelcnn_mask(self.kernel_size, self.mask_type, c_in, self.filters, self.num_groups,
                             self.num_conditioning_channels)
        shape = (self.kernel_size, self.kernel_size, c_in, self.filters)
        # The whole kernel is drawn, then masked in call (as PyTorch's masked convolutions do).
        self.kernel = self.add_weight(autocast=False, name="kernel", shape=shape,
                                      initializer=initializers.kernel(self.init, "conv"))
        self.bias = (self.add_weight(autocast=False, name="bias", shape=(self.filters,),
                                     initializer=initializers.bias(self.init, shape))
                     if self.use_bias else None)
        self._mask = tf.constant(mask)

    def call(self, x):
        dtype = self.compute_dtype
        kernel = tf.cast(self.kernel, dtype)
        h = tf.nn.conv2d(_pad(tf.cast(x, dtype), self.kernel_size // 2), kernel * tf.cast(self._mask, dtype), 1,
                         "VALID")
        return h if self.bias is None else h + tf.cast(self.bias, dtype)

    def get_config(self):
        return {**super().get_config(), "mask_type": self.mask_type, "filters": self.filters,
                "kernel_size": self.kernel_size, "use_bias": self.use_bias,
                "num_groups": self.num_groups, "num_conditioning_channels": self.num_conditioning_channels,
                "init": self.init}
