"""Writers of an evaluation's results: PNG pictures and TensorBoard images, TensorBoard's
projector, TensorBoard scalars, and `<model_dir>/results.json`.

    paths = write_pictures(model, images, "runs/x/pictures", log_likelihoods=per_example["log_likelihood"])
    write_summaries(writer, summary, step=0, prefix="test")
    save_results(model_dir, summary, split="test")

* `write_pictures` writes PNG files and TensorBoard images: samples, reconstructions next to
  their originals, interpolations, the learned pseudo-inputs, samples from chosen pseudo-inputs,
  and a histogram of the per-example log-likelihoods.
* `write_projector` puts a split's top latent means into TensorBoard's projector.
* `write_summaries` logs a summary's numbers as TensorBoard scalars.
* `save_results` merges a summary into `<model_dir>/results.json` under the split's name.

The numbers and the images themselves come from `tfvamp.evaluation`.
"""
import math
import os

import numpy as np
import tensorflow as tf

from tfvamp import checkpointing
from tfvamp import pictures
from tfvamp import priors
from tfvamp.evaluation import choose_pseudo_inputs, interpolations, samples_from_pseudo_inputs

PROJECTOR_MAX_IMAGES = 5000  # points (and sprite tiles) in TensorBoard's projector


def write_projector(log_dir, top_means, images, log_likelihoods=None):
    """TensorBoard's projector for a set of images: their latent means as an embedding, the
    images as a sprite, and their index (and log-likelihood) as metadata.

    Writes `embedding.ckpt-1.*`, `metadata.tsv`, `sprite.png` and `projector_config.pbtxt` into
    `log_dir` (a TensorBoard run directory). Returns the config's path.
    """
    from tensorboard.plugins import projector  # pylint: disable=import-outside-toplevel

    os.makedirs(log_dir, exist_ok=True)
    images = np.asarray(images, np.float32)
    with open(os.path.join(log_dir, "metadata.tsv"), "w") as f:
        f.write("index\tlog_likelihood\n" if log_likelihoods is not None else "index\n")
        for i in range(len(images)):
            f.write(f"{i}\t{float(log_likelihoods[i]):.2f}\n" if log_likelihoods is not None else f"{i}\n")
    pictures.save_png(os.path.join(log_dir, "sprite.png"), pictures.sprite(images))
    tf.train.Checkpoint(embedding=tf.Variable(np.asarray(top_means, np.float32))).save(
        os.path.join(log_dir, "embedding.ckpt"))
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    embedding.metadata_path = "metadata.tsv"
    embedding.sprite.image_path = "sprite.png"
    embedding.sprite.single_image_dim.extend([images.shape[2], images.shape[1]])  # width, height
    projector.visualize_embeddings(log_dir, config)
    return os.path.join(log_dir, "projector_config.pbtxt")


def write_pictures(model, images, picture_dir, *, log_likelihoods=None, usage=None, writer=None, step=0,
                   num_samples=64, num_reconstructions=32, num_pseudo_inputs=8, samples_per_pseudo_input=8,
                   interpolation_steps=8, seed=0, scale=None, prefix="eval"):
    """Writes the evaluation pictures as PNG files and (with `writer`) TensorBoard images.

    Pictures: `samples.png`; `reconstructions.png` (pairs original | reconstruction);
    `interpolations.png` (rows: the decoded straight line between the latent means of two test
    images); for VampPrior priors `pseudo_inputs.png` (all K, heaviest first when `usage` is
    given), `pseudo_input_samples.png` (each row: a chosen pseudo-input, then images generated
    from it) and `pseudo_input_interpolations.png` (between the heaviest pseudo-inputs); with
    `log_likelihoods`, `log_likelihood_histogram.png` (and a TensorBoard histogram).

    Args:
      model: a tfvamp model.
      images: test images `[N, H, W, C]` (the first `num_reconstructions` are reconstructed).
      picture_dir: the folder for the PNG files (created).
      log_likelihoods: optional per-example log-likelihoods for the histogram.
      usage: optional `component_usage` `[K]`: orders the pseudo-inputs and picks the heaviest.
      writer: optional `tf.summary` writer for TensorBoard images.
      step: the TensorBoard step.
      num_samples: images sampled from the model (0 skips; PixelHVAE samples are slow on CPU).
      num_reconstructions: originals reconstructed.
      num_pseudo_inputs, samples_per_pseudo_input: the figure-4 grid.
      interpolation_steps: images per interpolation row (0 skips them).
      seed: seeds the samples and the choice of pseudo-inputs.
      scale: enlargement of every tile (None: `pictures.default_scale`, a tile at least 56 px high).
      prefix: TensorBoard tag prefix.

    Returns:
      `{picture name: PNG path}`.
    """
    grids = _sample_and_reconstruction_grids(model, images, num_samples, num_reconstructions, seed)
    grids.update(_interpolation_grids(model, images, interpolation_steps, seed, usage, num_pseudo_inputs))
    if priors.has_pseudo_inputs(model.prior_name):
        grids.update(_pseudo_input_grids(model, usage, num_pseudo_inputs, samples_per_pseudo_input, seed))
    scale = scale or pictures.default_scale(model.image_shape[0])
    os.makedirs(picture_dir, exist_ok=True)
    paths = {}
    for name, (pics, columns) in grids.items():
        paths[name] = pictures.save_png(os.path.join(picture_dir, f"{name}.png"),
                                        pictures.image_grid(pics, columns, scale=scale))
        if writer is not None:
            with writer.as_default():
                pictures.tensorboard_image(f"{prefix}/{name}", pics, step, columns, scale=scale)
    if log_likelihoods is not None:
        paths["log_likelihood_histogram"] = _histogram(log_likelihoods, picture_dir, writer, step, prefix)
    if writer is not None:
        writer.flush()
    return paths


def _sample_and_reconstruction_grids(model, images, num_samples, num_reconstructions, seed):
    grids = {}
    if num_samples > 0:
        grids["samples"] = (model.sample(num_samples, seed=seed).numpy(), None)
    originals = np.asarray(images, np.float32)[:num_reconstructions]
    if len(originals):
        recon = model.reconstruct(originals).numpy()
        columns = 2 * max(1, int(math.ceil(math.sqrt(len(originals)))))
        grids["reconstructions"] = (pictures.interleave(originals, recon), columns)
    return grids


def _interpolation_grids(model, images, steps, seed, usage, num_pseudo_inputs):
    """Rows of decoded straight lines: between test images (first and second half of up to 16),
    and between the heaviest pseudo-inputs' latent means (VampPriors)."""
    grids = {}
    images = np.asarray(images, np.float32)[:16]
    pairs = len(images) // 2
    if steps <= 0 or pairs < 1:
        return grids
    means = model.encode_top(tf.constant(images))[0].numpy()
    lines = interpolations(model, means[:pairs], means[pairs:2 * pairs], steps, seed)
    grids["interpolations"] = (lines.reshape((-1,) + lines.shape[2:]), steps)
    if priors.has_pseudo_inputs(model.prior_name) and num_pseudo_inputs >= 2:
        chosen = choose_pseudo_inputs(model, num_pseudo_inputs, seed, usage)
        u = tf.gather(model.prior_layer.pseudo_inputs(), chosen)
        centres = model.encode_top(u)[0].numpy()
        lines = interpolations(model, centres[:-1], centres[1:], steps, seed)
        grids["pseudo_input_interpolations"] = (lines.reshape((-1,) + lines.shape[2:]), steps)
    return grids


def _pseudo_input_grids(model, usage, num_pseudo_inputs, samples_per_pseudo_input, seed):
    grids = {}
    u = model.prior_layer.pseudo_inputs().numpy()
    order = np.argsort(-np.asarray(usage), kind="stable") if usage is not None else np.arange(len(u))
    grids["pseudo_inputs"] = (u[order], None)
    if num_pseudo_inputs > 0 and samples_per_pseudo_input > 0:
        chosen = choose_pseudo_inputs(model, num_pseudo_inputs, seed, usage)
        generated = samples_from_pseudo_inputs(model, chosen, samples_per_pseudo_input, seed)
        rows = np.concatenate([u[chosen][:, None], generated], 1)  # [M, 1 + n, H, W, C]
        grids["pseudo_input_samples"] = (rows.reshape((-1,) + rows.shape[2:]), 1 + samples_per_pseudo_input)
    return grids


def _histogram(log_likelihoods, picture_dir, writer, step, prefix):
    ll = np.asarray(log_likelihoods, np.float64)
    hist = pictures.histogram_image(ll, title="per-example log-likelihood (nats)")
    path = pictures.save_png(os.path.join(picture_dir, "log_likelihood_histogram.png"), hist)
    if writer is not None:
        with writer.as_default():
            # Not "{prefix}/log_likelihood": write_summaries logs the mean under that tag.
            tf.summary.histogram(f"{prefix}/per_example_log_likelihood", ll, step=step)
            tf.summary.image(f"{prefix}/log_likelihood_histogram", hist[None].astype(np.float32) / 255.0, step=step)
    return path


def write_summaries(writer, summary, step=0, prefix="eval"):
    """Logs a summary's numbers (and active units per layer) as TensorBoard scalars."""
    with writer.as_default():
        for key, value in summary.items():
            if key == "active_units":
                for layer, n in value.items():
                    tf.summary.scalar(f"{prefix}/active_units_{layer}", n, step=step)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                tf.summary.scalar(f"{prefix}/{key}", value, step=step)
    writer.flush()


def save_results(model_dir, summary, split="test", **extra):
    """Merges `{split: {**summary, **extra}}` into `<model_dir>/results.json` (other sections are
    kept); returns its path."""
    checkpointing.update_results(model_dir, {split: {**summary, **extra}})
    return os.path.join(model_dir, checkpointing.RESULTS_FILE)
