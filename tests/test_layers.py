"""Layers against NumPy references, and PixelCNN causality."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvamp import layers as tl


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def test_gated_dense_matches_numpy():
    x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    layer = tl.GatedDense(3)
    layer.build(x.shape)
    rng = np.random.default_rng(1)
    for w in (layer.bias, layer.gate_bias):  # non-zero biases, so that both must be applied
        w.assign(rng.normal(size=w.shape).astype(np.float32))
    out = layer(x).numpy()
    value = x @ layer.kernel.numpy() + layer.bias.numpy()
    gate = x @ layer.gate_kernel.numpy() + layer.gate_bias.numpy()
    np.testing.assert_allclose(out, value * _sigmoid(gate), rtol=1e-5, atol=1e-6)


def _numpy_conv(x, kernel, stride, padding):
    """Direct cross-correlation, NHWC / HWIO, symmetric zero padding."""
    x = np.pad(x, [(0, 0), (padding, padding), (padding, padding), (0, 0)])
    k = kernel.shape[0]
    h_out = (x.shape[1] - k) // stride + 1
    w_out = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], h_out, w_out, kernel.shape[-1]))
    for i in range(h_out):
        for j in range(w_out):
            patch = x[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j, :] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out


@pytest.mark.parametrize("kernel_size,stride,shape,expected", [
    (7, 1, (28, 28), (28, 28)), (3, 2, (28, 28), (14, 14)), (3, 2, (14, 14), (7, 7)),
    (3, 2, (28, 20), (14, 10)), (3, 2, (14, 10), (7, 5))])
def test_gated_conv_matches_numpy_and_release_shapes(kernel_size, stride, shape, expected):
    x = np.random.default_rng(1).normal(size=(2,) + shape + (2,)).astype(np.float32)
    layer = tl.GatedConv2D(3, kernel_size, stride, padding=kernel_size // 2)
    layer.build(x.shape)
    layer.gate_bias.assign(np.array([0.5, -1.0, 2.0], np.float32))
    out = layer(x).numpy()
    assert out.shape[1:3] == expected
    pad = kernel_size // 2
    value = _numpy_conv(x, layer.kernel.numpy(), stride, pad) + layer.bias.numpy()
    gate = _numpy_conv(x, layer.gate_kernel.numpy(), stride, pad) + layer.gate_bias.numpy()
    np.testing.assert_allclose(out, value * _sigmoid(gate), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_masked_conv_is_causal(mask_type):
    rng = np.random.default_rng(2)
    height, width = 6, 5
    layer = tl.MaskedConv2D(mask_type, 4, 3)
    x = rng.normal(size=(1, height, width, 2)).astype(np.float32)
    base = layer(x).numpy()
    for pos in range(height * width):
        i, j = divmod(pos, width)
        changed = x.copy()
        changed[0, i, j, :] += 10.0  # perturb one pixel
        diff = np.abs(layer(changed).numpy() - base).max(axis=-1)[0]
        flat = diff.reshape(-1)
        # No output at or before pos sees a later pixel; mask A also hides pos from itself.
        earlier_or_self = flat[:pos + (mask_type == "A")]
        assert np.all(earlier_or_self == 0.0), (mask_type, pos)
        if mask_type == "B":
            assert flat[pos] > 0.0  # mask B does see the centre pixel


def test_pixelcnn_mask_values():
    mask_a = tl.pixelcnn_mask(3, "A", 1, 1)[..., 0, 0]
    mask_b = tl.pixelcnn_mask(3, "B", 1, 1)[..., 0, 0]
    np.testing.assert_array_equal(mask_a, [[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(mask_b, [[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="mask_type"):
        tl.MaskedConv2D("C", 4)


def _reference_mask(k, mask_type, n_in, n_out, groups, n_cond=0):
    """Element by element from the rule as stated: raster order of pixels, then colour groups
    (channel c of n in group floor(c * G / n)); conditioning inputs follow the pixel order only."""
    n_image = n_in - n_cond
    mask = np.zeros((k, k, n_in, n_out), np.float32)
    centre = k // 2
    for dy in range(k):
        for dx in range(k):
            for i in range(n_in):
                for o in range(n_out):
                    if (dy, dx) < (centre, centre):  # a pixel before the centre in raster order
                        mask[dy, dx, i, o] = 1.0
                    elif (dy, dx) == (centre, centre):
                        if i >= n_image:
                            mask[dy, dx, i, o] = mask_type == "B"
                        else:
                            g, h = (i * groups) // n_image, (o * groups) // n_out
                            mask[dy, dx, i, o] = g < h if mask_type == "A" else g <= h
    return mask


@pytest.mark.parametrize("k,mask_type,n_in,n_out,n_cond", [
    (3, "A", 3, 6, 0), (3, "B", 6, 6, 0), (3, "A", 3 + 6, 8, 6), (5, "B", 8, 7, 2), (3, "B", 7, 4, 0),
    (1, "B", 8, 6, 0)])
def test_colour_mask_matches_reference(k, mask_type, n_in, n_out, n_cond):
    mask = tl.pixelcnn_mask(k, mask_type, n_in, n_out, num_groups=3, num_conditioning_channels=n_cond)
    np.testing.assert_array_equal(mask, _reference_mask(k, mask_type, n_in, n_out, 3, n_cond))


def test_channel_groups_split_contiguously():
    np.testing.assert_array_equal(tl.channel_groups(6, 3), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(tl.channel_groups(8, 3), [0, 0, 0, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(tl.channel_groups(7, 3), [0, 0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(tl.channel_groups(3, 3), [0, 1, 2])
    with pytest.raises(ValueError, match="cannot fill"):
        tl.channel_groups(2, 3)
    with pytest.raises(ValueError, match="cannot fill"):
        tl.MaskedConv2D("B", 2, num_groups=3)
    with pytest.raises(ValueError, match="num_conditioning_channels"):
        tl.pixelcnn_mask(3, "A", 4, 8, num_conditioning_channels=4)


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("n_in,n_out,n_cond", [(1, 1, 0), (3, 64, 2), (64, 64, 0), (64, 2, 0)])
def test_one_channel_mask_is_the_old_mask(k, mask_type, n_in, n_out, n_cond):
    old = np.ones((k, k, n_in, n_out), np.float32)  # the rule before colour groups, verbatim
    c = k // 2
    old[c, c + (mask_type == "B"):, :, :] = 0.0
    old[c + 1:, :, :, :] = 0.0
    # The release masks x and its latent maps alike, so marking the maps changes nothing for C = 1.
    np.testing.assert_array_equal(tl.pixelcnn_mask(k, mask_type, n_in, n_out), old)
    np.testing.assert_array_equal(tl.pixelcnn_mask(k, mask_type, n_in, n_out, 1, n_cond), old)


def test_head_mask_is_the_channel_major_mask_in_parameter_major_order():
    hidden, channels, params = 8, 3, 2
    head = tl.pixelcnn_head_mask(hidden, channels, params)
    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2])  # channel_groups(8, 3), written out
    for p in range(params):
        for c in range(channels):
            np.testing.assert_array_equal(head[:, p * channels + c], groups <= c)
    channel_major = tl.pixelcnn_mask(1, "B", hidden, channels * params, num_groups=channels)[0, 0]
    for p in range(params):
        for c in range(channels):
            np.testing.assert_array_equal(channel_major[:, c * params + p], groups <= c)


@pytest.mark.parametrize("head", ["image_head_layout", "masked_conv_1x1"])
def test_colour_stack_is_causal_over_pixels_and_channels(head):
    """A chain 'A' -> 'B' -> 'B' -> 1x1 head: output channel c at pixel p has zero gradient
    with respect to every later pixel, to channels >= c of p, and to the conditioning maps
    at p and later; and a non-zero one for channels < c of p and for p's left and upper
    neighbours."""
    keras.utils.set_random_seed(3)
    height, width, channels, n_cond, params = 6, 5, 3, 2, 2
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(1, height, width, channels)), tf.float32)
    maps = tf.constant(rng.normal(size=(1, height, width, n_cond)), tf.float32)
    convs = [tl.MaskedConv2D("A", 8, 3, num_groups=3, num_conditioning_channels=n_cond),
             tl.MaskedConv2D("B", 7, 3, num_groups=3), tl.MaskedConv2D("B", 8, 3, num_groups=3)]
    if head == "masked_conv_1x1":
        convs.append(tl.MaskedConv2D("B", channels * params, 1, use_bias=True, num_groups=3))
        channel_of = np.arange(channels * params) // params  # channel-major outputs
    else:
        kernel = rng.normal(size=(8, params * channels)).astype(np.float32)
        kernel *= tl.pixelcnn_head_mask(8, channels, params)
        channel_of = np.arange(channels * params) % channels  # ImageHead's parameter-major outputs
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, maps])
        h = tf.concat([x, maps], -1)
        for layer in convs:
            h = tf.tanh(layer(h))  # a smooth non-linearity: no dead units to hide a connection
        if head == "image_head_layout":
            h = tf.tensordot(h, kernel, 1)
    num = height * width
    d_x = tf.reshape(tape.jacobian(h, x), [num, channels * params, num, channels]).numpy()
    d_maps = tf.reshape(tape.jacobian(h, maps), [num, channels * params, num, n_cond]).numpy()
    for p in range(num):
        i, j = divmod(p, width)
        before = [q for q in (p - 1 if j > 0 else None, p - width if i > 0 else None) if q is not None]
        for o, c in enumerate(channel_of):
            allowed = np.zeros((num, channels), bool)
            allowed[:p] = True
            allowed[p, :c] = True
            assert np.all(d_x[p, o][~allowed] == 0.0), (p, o)
            assert np.all(d_maps[p, o, p:] == 0.0), (p, o)
            assert np.all(d_x[p, o, p, :c] != 0.0), (p, o)  # the colour groups are connected
            for q in before:
                assert np.all(d_x[p, o, q] != 0.0) and np.all(d_maps[p, o, q] != 0.0), (p, o, q)


def test_masked_conv_config_round_trip_builds_the_same_mask():
    layer = tl.MaskedConv2D("A", 7, 3, num_groups=3, num_conditioning_channels=4)
    clone = tl.MaskedConv2D.from_config(layer.get_config())
    for each in (layer, clone):
        each.build((None, 6, 5, 3 + 4))
    assert clone.get_config() == layer.get_config()
    np.testing.assert_array_equal(clone._mask.numpy(), layer._mask.numpy())
    plain = tl.MaskedConv2D("A", 7, 3)
    plain.build((None, 6, 5, 3 + 4))
    assert np.any(plain._mask.numpy() != layer._mask.numpy())  # so the new arguments did matter


def test_configs_round_trip():
    for layer in (tl.GatedDense(5), tl.GatedConv2D(4, 3, 2, 1), tl.MaskedConv2D("B", 8, 5)):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_gate_is_the_sigmoid_in_each_dtype_with_its_gradient():
    z = np.linspace(-12.0, 12.0, 97)
    for dtype, tol in ((tf.float32, 1e-6), (tf.bfloat16, 2.0 ** -8)):
        zt = tf.cast(z, dtype)
        with tf.GradientTape() as tape:
            tape.watch(zt)
            s = tl.gate(zt)
        assert s.dtype == dtype
        zq = zt.numpy().astype(np.float64)  # the value the layer received
        sq = _sigmoid(zq)
        np.testing.assert_allclose(s.numpy().astype(np.float64), sq, rtol=tol, atol=tol * 1e-3)
        grad = tape.gradient(s, zt).numpy().astype(np.float64)
        np.testing.assert_allclose(grad, sq * (1 - sq), rtol=4 * tol, atol=1e-7 if dtype == tf.float32 else 1e-4)


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-6.0, 2.0)])
def test_hardtanh_values_and_gradient_against_numpy(low, high):
    x = np.random.default_rng(2).uniform(low - 3, high + 3, size=(50, 7)).astype(np.float32)
    dy = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = tl.hardtanh(xt, low, high)
    np.testing.assert_array_equal(y.numpy(), np.clip(x, low, high))
    grad = tape.gradient(y, xt, output_gradients=tf.constant(dy)).numpy()
    np.testing.assert_array_equal(grad, np.where((x > low) & (x < high), dy, 0.0))
    with pytest.raises(ValueError, match="low < high"):
        tl.hardtanh(xt, 1.0, 1.0)


def test_gated_dense_in_bfloat16_has_the_gradient_of_numpy():
    """The bfloat16 path writes the gate's gradient out (no SigmoidGrad): checked against float64
    NumPy on the same bfloat16-rounded factors, to bfloat16's precision."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 9)).astype(np.float32)
    layer = tl.GatedDense(5)
    layer.build(x.shape)
    for w in (layer.bias, layer.gate_bias):
        w.assign(rng.normal(size=w.shape).astype(np.float32))
    dy = rng.normal(size=(64, 5)).astype(np.float32)
    with tf.GradientTape() as tape:
        h = layer.forward(tf.constant(x), tf.bfloat16)
        loss = tf.reduce_sum(tf.cast(h, tf.float32) * dy)
    grads = tape.gradient(loss, [layer.kernel, layer.gate_kernel, layer.bias, layer.gate_bias])

    def q(a):  # bfloat16 rounding, as the layer sees its inputs and weights
        return tf.cast(tf.cast(a, tf.bfloat16), tf.float64).numpy()

    xq, w, v, b, c = q(x), q(layer.kernel), q(layer.gate_kernel), q(layer.bias), q(layer.gate_bias)
    a, z = xq @ w + b, xq @ v + c
    s = _sigmoid(z)
    da, dz = dy * s, dy * a * s * (1 - s)
    expected = [xq.T @ da, xq.T @ dz, da.sum(0), dz.sum(0)]
    for got, want in zip(grads, expected):
        scale = np.max(np.abs(want))
        assert np.max(np.abs(got.numpy() - want)) < 0.03 * scale  # bfloat16: 8 significant bits, sums of 64
