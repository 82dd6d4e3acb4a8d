"""Layers against NumPy references, and PixelCNN causality."""
import numpy as np
import pytest

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


def test_hardtanh_and_configs_round_trip():
    layer = tl.Hardtanh(-6.0, 2.0)
    np.testing.assert_array_equal(layer(np.array([-9.0, 0.5, 3.0], np.float32)).numpy(), [-6.0, 0.5, 2.0])
    for layer in (tl.GatedDense(5), tl.GatedConv2D(4, 3, 2, 1), tl.MaskedConv2D("B", 8, 5), layer):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="min_value < max_value"):
        tl.Hardtanh(1.0, 0.0)
