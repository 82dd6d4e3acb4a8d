"""The six paper datasets' facts, in one table (docs/paper_details.md section 6).

`tfvamp.data.get_info` serves them to the library, the builders check the files against them.

| name                   | image    | likelihood           | pseudo-input init | train / valid / test | binarised    | pixels as the model sees them |
|------------------------|----------|----------------------|-------------------|----------------------|--------------|-------------------------------|
| static_mnist           | 28x28x1  | bernoulli            | N(0.05, 0.01)     | 50000 / 10000 / 10000 | fixed (file) | 0/1 as stored                  |
| dynamic_mnist          | 28x28x1  | bernoulli            | N(0.05, 0.01)     | 50000 / 10000 / 10000 | every batch  | x / 255, then Bernoulli        |
| omniglot               | 28x28x1  | bernoulli            | N(0.05, 0.01)     | 23000 / 1345 / 8070   | every batch  | grey in [0, 1], then Bernoulli |
| caltech101_silhouettes | 28x28x1  | bernoulli            | N(0.5, 0.02)      | 4100 / 2264 / 2307    | fixed (file) | 0/1 as stored                  |
| frey_faces             | 28x20x1  | discretized_logistic | N(0.5, 0.02)      | 1565 / 200 / 200      | no           | (x + 0.5) / 256                |
| histopathology         | 28x28x1  | discretized_logistic | N(0.4, 0.05)      | 6800 / 2000 / 2000    | no           | clipped to [1/512, 1 - 1/512]  |
"""
import collections

SPLITS = ("train", "validation", "test")
MANUAL_DIR_ENV = "TFVAMP_MANUAL_DIR"
# How stored pixels become what the model sees (`tfvamp.data`).
PIXELS = ("binary", "grey_255", "unit", "bins", "clip")

Facts = collections.namedtuple(
    "Facts", "image_shape likelihood pseudo_inputs_mean pseudo_inputs_std sizes dynamic_binarization pixels")

PAPER_DATASETS = {
    "static_mnist": Facts((28, 28, 1), "bernoulli", 0.05, 0.01, (50000, 10000, 10000), False, "binary"),
    "dynamic_mnist": Facts((28, 28, 1), "bernoulli", 0.05, 0.01, (50000, 10000, 10000), True, "grey_255"),
    "omniglot": Facts((28, 28, 1), "bernoulli", 0.05, 0.01, (23000, 1345, 8070), True, "unit"),
    "caltech101_silhouettes": Facts((28, 28, 1), "bernoulli", 0.5, 0.02, (4100, 2264, 2307), False, "binary"),
    "frey_faces": Facts((28, 20, 1), "discretized_logistic", 0.5, 0.02, (1565, 200, 200), False, "bins"),
    "histopathology": Facts((28, 28, 1), "discretized_logistic", 0.4, 0.05, (6800, 2000, 2000), False, "clip"),
}


def sizes(name):
    """{split: number of images} of a paper dataset."""
    return dict(zip(SPLITS, PAPER_DATASETS[name].sizes))
