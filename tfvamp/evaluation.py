"""Test-set evaluation (docs/paper_details.md section 7): log-likelihood, ELBO, bits/dim, active units.

    summary, per_example = evaluate(model, splits.test, num_samples=5000)
    summary['log_likelihood']   # mean importance-sampled log p(x), nats
    summary['active_units']     # {'z1': 31, 'z2': 12}

* `evaluate` makes one pass over a dataset of image batches: per batch the importance-sampled
  log-likelihood (`model.log_likelihood`: S samples vectorised in chunks, prior computed once
  per batch, float64 logsumexp), the single-sample ELBO at beta = 1, and the posterior means
  that `active_units` needs.
* `active_units` counts, per latent layer, the units u with Cov_x(E_q[u|x]) > 0.01
  (Burda et al. 2016), from the posterior means of `model.encode`; the variance over the
  data set is the unbiased sample variance (ddof = 1).
* `samples_from_pseudo_inputs` draws z ~ q(z | u_k) for chosen pseudo-inputs u_k and decodes
  them (the paper's figure 4).

Pictures, TensorBoard summaries, the projector and results.json are written by
`tfvamp.evaluation_writers`.
"""
import math
import time
import weakref

import numpy as np
import tensorflow as tf

from tfvamp import noise
from tfvamp import priors

ACTIVE_UNIT_THRESHOLD = 0.01

_ELBO_FUNCTIONS = weakref.WeakKeyDictionary()


def _batches(data, batch_size=100):
    """Image batches `[B, H, W, C]` from a dataset (of images, (images, labels) or {'image': ...})
    or from an array of images."""
    if isinstance(data, (np.ndarray, tf.Tensor)):
        data = tf.data.Dataset.from_tensor_slices(np.asarray(data, np.float32)).batch(batch_size)
    for batch in data:
        if isinstance(batch, dict):
            batch = batch["image"]
        elif isinstance(batch, (tuple, list)):
            batch = batch[0]
        yield tf.cast(batch, tf.float32)


def _num_batches(data):
    if isinstance(data, tf.data.Dataset):
        n = int(data.cardinality())
        return n if n >= 0 else None
    return None


# The seed stream of the ELBO's one-sample noise: apart from the importance samples' (0).
ELBO_STREAM = 4


def _elbo_terms(model):
    """A compiled `(images, seed [2] or None) -> loss_terms(images, beta=1)` for `model` (cached
    per model); with a seed, the one-sample noise is a stateless draw from it."""
    fn = _ELBO_FUNCTIONS.get(model)
    if fn is None:
        def terms(x, seed):  # seed None: TensorFlow's global generator
            noise_fn = None if seed is None else noise.noise_fn(seed)
            return model.loss_terms(x, beta=1.0, training=False, noise_fn=noise_fn)

        fn = tf.function(terms, reduce_retracing=True, autograph=False)
        _ELBO_FUNCTIONS[model] = fn
    return fn


def uses_bits_per_dim(model):
    """True for grey data (a discretized logistic likelihood), reported in bits per dimension."""
    return model.likelihood_name.startswith("discretized_logistic")


def bits_per_dim(log_likelihood, num_dims):
    """Bits per dimension of a log-likelihood in nats: -LL / (D ln 2) (lower is better)."""
    return -np.asarray(log_likelihood, np.float64) / (num_dims * math.log(2.0))


def count_active_units(posterior_means, threshold=ACTIVE_UNIT_THRESHOLD):
    """Per layer, how many columns of the `[N, D]` posterior means vary more than `threshold`
    over the N examples (unbiased sample variance)."""
    return {layer: int(np.sum(unit_variances(means) > threshold)) for layer, means in posterior_means.items()}


def unit_variances(means):
    """Cov_x(E_q[u|x]) of every unit: the sample variance (ddof = 1) of `[N, D]` means, `[D]`."""
    means = np.asarray(means, np.float64)
    if means.shape[0] < 2:
        raise ValueError(f"Active units need the posterior means of at least 2 examples, got {means.shape[0]}.")
    return np.var(means, axis=0, ddof=1)


def posterior_means(model, dataset):
    """`{layer: [N, D]}` posterior means E_q[z|x] of every latent layer over a dataset."""
    means = {layer: [] for layer in model.latent_sizes}
    for x in _batches(dataset):
        codes = model.encode(x)
        for layer in means:
            means[layer].append(codes[f"{layer}_mean"].numpy())
    return {layer: np.concatenate(m, 0) for layer, m in means.items()}


def active_units(model, dataset, threshold=ACTIVE_UNIT_THRESHOLD):
    """Burda et al. (2016): per latent layer, the units u with Cov_x(E_q[u|x]) > `threshold`.

    Args:
      model: a tfvamp model (`model.encode` gives `{layer}_mean` per layer).
      dataset: image batches (a `tf.data.Dataset`, or an array of images).
      threshold: 0.01 in the paper.

    Returns:
      `{layer: int}`, e.g. `{'z': 23}` or `{'z1': 31, 'z2': 12}`.
    """
    return count_active_units(posterior_means(model, dataset), threshold)


def evaluate(model, dataset, *, num_samples=5000, chunk_size=None, prior_dtype="float32", seed=None,
             progress=True):
    """Importance-sampled log-likelihood, ELBO, bits/dim and active units over a dataset.

    Args:
      model: a tfvamp model.
      dataset: batches of images `[B, H, W, C]` in [0, 1] (a `tf.data.Dataset`, or an array).
      num_samples: S importance samples per example (5000 in the paper).
      chunk_size: importance samples per network pass (default: the model's, ~256 MB).
      prior_dtype: precision of the mixture prior's log-density in the estimator ('float32',
        centred per image, or 'float64'; see `model.log_likelihood`).
      seed: an int makes the log-likelihoods reproducible (batch i draws its samples from
        seed + i); None uses TensorFlow's global generator.
      progress: show a tqdm bar over batches with the images per second.

    Returns:
      (summary, per_example). `summary`: JSON-able numbers: 'log_likelihood' (mean IS estimate,
      nats), 'log_likelihood_std' (over examples), 'log_likelihood_sem' (its standard error),
      'elbo' (mean, beta = 1), 'reconstruction', 'kl', 'bits_per_dim' and 'elbo_bits_per_dim'
      (discretized logistic likelihoods only: -value / (D ln 2)), 'active_units' {layer: int},
      'num_examples', 'num_samples', 'seconds', 'images_per_second', and for mixture priors
      'components_in_use' (`components_in_use`).
      `per_example`: numpy arrays 'log_likelihood' (float64) and 'elbo', 'reconstruction', 'kl',
      the posterior means '{layer}_mean' `[N, D]`; for mixture priors also 'component_usage'
      `[K]` (per component: `component_usage`).
    """
    num_samples = int(num_samples)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    elbo_terms = _elbo_terms(model)
    lls, elbos, recons, kls = [], [], [], []
    means = {layer: [] for layer in model.latent_sizes}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=_num_batches(dataset), unit="batch", desc=f"evaluating (S={num_samples})")
    count, start = 0, time.perf_counter()
    for index, x in enumerate(_batches(dataset)):
        lls.append(model.log_likelihood(x, num_samples=num_samples, chunk_size=chunk_size, prior_dtype=prior_dtype,
                                        seed=None if seed is None else int(seed) + index).numpy())
        terms = elbo_terms(x, None if seed is None else noise.seed_pair(int(seed) + index, ELBO_STREAM))
        elbos.append(-terms["loss"].numpy())
        recons.append(terms["reconstruction"].numpy())
        kls.append(terms["kl"].numpy())
        codes = model.encode(x)
        for layer in means:
            means[layer].append(codes[f"{layer}_mean"].numpy())
        count += int(x.shape[0])
        if bar is not None:
            elapsed = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(img_s=f"{count / max(elapsed, 1e-9):.1f}", LL=f"{np.mean(np.concatenate(lls)):.2f}")
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    if count == 0:
        raise ValueError("evaluate got an empty dataset.")

    per_example = {"log_likelihood": np.concatenate(lls).astype(np.float64),
                   "elbo": np.concatenate(elbos), "reconstruction": np.concatenate(recons),
                   "kl": np.concatenate(kls)}
    means = {layer: np.concatenate(m, 0) for layer, m in means.items()}
    per_example.update({f"{layer}_mean": m for layer, m in means.items()})
    usage = component_usage(model, means[model.top_latent_name])
    if usage is not None:
        per_example["component_usage"] = usage
    summary = summarize(model, per_example, means)
    summary.update({"num_samples": num_samples, "seconds": float(seconds),
                    "images_per_second": float(count / max(seconds, 1e-9))})
    return summary, per_example


def summarize(model, per_example, posterior_means):
    """The summary numbers of `evaluate` from its per-example arrays and posterior means."""
    ll = per_example["log_likelihood"]
    count = len(ll)
    summary = {
        "log_likelihood": float(np.mean(ll)),
        "log_likelihood_std": float(np.std(ll)),
        "log_likelihood_sem": float(np.std(ll, ddof=1) / math.sqrt(count)) if count > 1 else float("nan"),
        "elbo": float(np.mean(per_example["elbo"])),
        "reconstruction": float(np.mean(per_example["reconstruction"])),
        "kl": float(np.mean(per_example["kl"])),
        "num_examples": count,
    }
    if uses_bits_per_dim(model):
        summary["bits_per_dim"] = float(bits_per_dim(summary["log_likelihood"], model.num_pixels))
        summary["elbo_bits_per_dim"] = float(bits_per_dim(summary["elbo"], model.num_pixels))
    summary["active_units"] = count_active_units(posterior_means) if count > 1 else {}
    if "component_usage" in per_example:
        summary["components_in_use"] = components_in_use(per_example["component_usage"])
    if priors.has_learnable_pseudo_inputs(model.prior_name):
        summary["pseudo_inputs_moved"] = pseudo_inputs_moved(model)
    return summary


def pseudo_inputs_moved(model):
    """How many of the K learnable pseudo-inputs left their initialisation: the mean distance of
    their pixels from the init mean exceeds 2.2 times what N(mean, std) itself gives
    (2.2 std sqrt(2 / pi): 0.035 for Frey's N(0.5, 0.02), whose draws sit 0.016 away on average).
    Measured against N(pseudo_inputs_mean, pseudo_inputs_std), so it means little for a run
    initialised from training images."""
    u = model.prior_layer.pseudo_inputs().numpy().astype(np.float64)
    distance = np.abs(u - model.pseudo_inputs_mean).reshape(len(u), -1).mean(-1)
    return int(np.sum(distance > 2.2 * model.pseudo_inputs_std * math.sqrt(2.0 / math.pi)))


def component_usage(model, top_means):
    """How much of the prior's mass each component carries for these images: the average over
    images of p(k | z), z = E_q[z_top | x] their posterior means `[N, D_top]`. Returns `[K]`
    summing to 1, or None for the standard prior (no components)."""
    if not priors.is_mixture(model.prior_name):
        return None
    prior = model.prior()
    top_means = np.asarray(top_means, np.float32)
    parts = [prior.responsibilities(tf.constant(part)).numpy().astype(np.float64)
             for part in np.array_split(top_means, max(1, len(top_means) // 1000))]
    return np.concatenate(parts).mean(0)


def components_in_use(usage, mass=0.99):
    """How many components, heaviest first, it takes to carry `mass` of the usage."""
    ordered = np.sort(np.asarray(usage, np.float64))[::-1]
    return int(np.searchsorted(np.cumsum(ordered), mass * ordered.sum()) + 1)


def pick_images(dataset, num, num_examples, seed=0):
    """`num` images at seeded random positions of a dataset of `num_examples` images, in order.

    For pictures: test sets can be sorted by class (static MNIST's is), so the first batch
    would show a single digit.
    """
    num = min(int(num), int(num_examples))
    wanted = np.sort(np.random.default_rng(seed).choice(int(num_examples), num, replace=False))
    picked, offset = [], 0
    for x in _batches(dataset):
        x = x.numpy()
        local = wanted[(wanted >= offset) & (wanted < offset + len(x))] - offset
        picked.append(x[local])
        offset += len(x)
        if offset > wanted[-1]:
            break
    return np.concatenate(picked, 0)


def choose_pseudo_inputs(model, num, seed=0, usage=None):
    """`num` distinct pseudo-input indices for figures: the heaviest components by `usage`
    (`component_usage`) when given, else by the weighted VampPrior's learned weights, else a
    seeded random choice (never simply the first ones)."""
    _require_vampprior(model)
    k = model.num_components
    num = min(int(num), k)
    if usage is None and model.prior_name == "weighted_vampprior":
        usage = model.prior_layer.mixture_weights().numpy()
    if usage is not None:
        return [int(i) for i in np.argsort(-np.asarray(usage), kind="stable")[:num]]
    return [int(i) for i in np.sort(np.random.default_rng(seed).choice(k, num, replace=False))]


def interpolations(model, start, end, steps=8, seed=0):
    """Images along straight lines in the top latent space, `[M, steps, H, W, C]`.

    `start`, `end`: `[M, D_top]` latent points (e.g. posterior means of two images); row m goes
    from `start[m]` to `end[m]` in `steps` evenly spaced points, each generated with the same
    seed (two-level models draw z1 ~ p(z1 | z2) from it).
    """
    start, end = np.asarray(start, np.float32), np.asarray(end, np.float32)
    t = np.linspace(0.0, 1.0, int(steps), dtype=np.float32)[None, :, None]
    points = (1.0 - t) * start[:, None] + t * end[:, None]  # [M, steps, D]
    seed_pair = tf.constant([int(seed), 3], tf.int32)
    images = model.generate(tf.constant(points.reshape(-1, points.shape[-1])), seed_pair).numpy()
    return images.reshape(points.shape[:2] + tuple(model.image_shape))


def _require_vampprior(model):
    if not priors.has_pseudo_inputs(model.prior_name):
        raise ValueError(f"The {model.prior_name!r} prior has no pseudo-inputs; they exist for "
                         f"{', '.join(priors.PSEUDO_INPUT_PRIORS)}.")


def samples_from_pseudo_inputs(model, indices, num_samples=8, seed=0):
    """Images generated from chosen pseudo-inputs (the paper's figure 4).

    For each k in `indices`: encode u_k, draw `num_samples` z ~ q(z | u_k) (the top latent),
    and generate images from them (two-level models draw z1 ~ p(z1 | z2) as in sampling).

    Args:
      model: a model with a VampPrior-family prior.
      indices: pseudo-input indices in [0, K).
      num_samples: images per pseudo-input.
      seed: an int; the same seed gives the same images.

    Returns:
      float32 numpy `[len(indices), num_samples, H, W, C]` in [0, 1].
    """
    _require_vampprior(model)
    indices = np.asarray(indices, np.int32).reshape(-1)
    if indices.size == 0 or indices.min() < 0 or indices.max() >= model.num_components:
        raise ValueError(f"indices must be non-empty and in [0, {model.num_components}), got {indices.tolist()}.")
    num_samples = int(num_samples)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")

    images = _pseudo_input_sampler(model)(tf.constant(indices), tf.constant(num_samples),
                                          tf.constant([int(seed), 2], tf.int32))
    return images.numpy()


_PSEUDO_INPUT_SAMPLERS = weakref.WeakKeyDictionary()


def _pseudo_input_sampler(model):
    """A compiled `(indices [M], n, seed [2]) -> images [M, n, H, W, C]` for `model` (cached)."""
    fn = _PSEUDO_INPUT_SAMPLERS.get(model)
    if fn is not None:
        return fn

    @tf.function(autograph=False, reduce_retracing=True)
    def draw(indices, num_samples, seed):
        seed_z, seed_x = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        mean, logvar = model.encode_top(tf.gather(model.prior_layer.pseudo_inputs(), indices))  # [M, D]
        shape = tf.shape(mean)
        eps = tf.random.stateless_normal(tf.stack([shape[0], num_samples, shape[1]]), seed_z)
        z = mean[:, None] + tf.exp(0.5 * logvar)[:, None] * eps  # [M, n, D]
        images = model.generate(tf.reshape(z, [-1, model.top_latent_size]), seed_x)
        return tf.reshape(images, tf.concat([[shape[0], num_samples], model.image_shape], 0))

    _PSEUDO_INPUT_SAMPLERS[model] = draw
    return draw



def paired_difference(baseline, other):
    """Mean and standard error over test images of other(x) - baseline(x), two runs' per-image
    log-likelihoods `[N]` (each run's `eval_<split>.npz`, in the same image order).

    The standard error is over images only: it says how well this test set pins down the
    difference between these two trained models, not how much training again would move it.

    Returns:
      dict: `paired_difference` (nats per image), `paired_se`, `num_examples`, and the share of
      images on which `other` is better (`other_better`).
    """
    baseline, other = np.asarray(baseline, np.float64), np.asarray(other, np.float64)
    if baseline.shape != other.shape or baseline.ndim != 1 or len(baseline) < 2:
        raise ValueError(f"paired_difference takes two [N] arrays of the same test set (N >= 2), got shapes "
                         f"{baseline.shape} and {other.shape}.")
    diff = other - baseline
    return {"paired_difference": float(diff.mean()), "paired_se": float(diff.std(ddof=1) / math.sqrt(len(diff))),
            "num_examples": int(len(diff)), "other_better": float(np.mean(diff > 0))}
