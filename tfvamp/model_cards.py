"""Shipping a trained run as a pretrained model: `saved_models/<name>/` with its card.

    python scripts/ship_model.py --model_dir RUN --name frey_faces_hvae_vampprior \
        --retrain "python scripts/train.py --flagfile configs/frey.cfg"

writes the SavedModel (as `scripts/export.py` does), `card.json` (the numbers), `README.md`
(the model card: data and checksums, model and config, budget, the test log-likelihood with
its standard error and how it was measured, the tfvamp commit, the command that re-trains it),
`samples.png` (prior samples: a component drawn by the mixture weights, then its latent) and
`pseudo_inputs.png` (the 100 most used pseudo-inputs, by the test images' posterior means).
tests/test_pretrained.py recomputes the card's number from the shipped files in a fresh process.
"""
import datetime
import os
import subprocess

import numpy as np

from tfvamp import checkpointing
from tfvamp import evaluation
from tfvamp import export
from tfvamp import pictures
from tfvamp import pretrained
from tfvamp import priors

# The model families as the paper writes them, for the card's first line.
_PAPER_NAMES = {"vae": "VAE", "hvae": "HVAE", "convhvae": "convHVAE", "pixelhvae": "PixelHVAE"}


def git_commit(path=pretrained.PACKAGE_ROOT):
    """The tfvamp commit at `path` (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def data_files(dataset):
    """[(file name, sha256)] of a paper dataset's original files, as the builders verify them."""
    from tfvamp import data  # pylint: disable=import-outside-toplevel

    if dataset not in data.NAMES:
        return []
    return [(s.name, s.sha256[0] if s.sha256 else None) for s in data.original_files(dataset)]


def test_images(config, data_dir=None, manual_dir=None):
    """The run's test split, float32 `[N, H, W, C]`, as evaluation sees it."""
    from tfvamp import data  # pylint: disable=import-outside-toplevel

    return data.as_numpy(config.data.dataset, "test", data_dir=data_dir, manual_dir=manual_dir)


def card_subset(images, num_images):
    """The card's test images: every k-th image in file order, `num_images` of them (all for 0).
    Evenly spread, since some test files are sorted (static MNIST's by digit)."""
    if not num_images or num_images >= len(images):
        return images
    return images[::len(images) // int(num_images)][:int(num_images)]


def measure(model, images, num_samples, seed):
    """The card's number: per-image IS log-likelihoods (batch i of 100 seeded seed + i), summarised."""
    summary, per_example = evaluation.evaluate(model, images, num_samples=num_samples, seed=seed, progress=False)
    ll = per_example["log_likelihood"]
    out = {"log_likelihood": float(np.mean(ll)), "log_likelihood_sem": float(np.std(ll, ddof=1) / np.sqrt(len(ll))),
           "num_images": int(len(ll)), "num_samples": int(num_samples), "seed": int(seed),
           "elbo": summary["elbo"]}
    if evaluation.uses_bits_per_dim(model):
        out["bits_per_dim"] = float(evaluation.bits_per_dim(out["log_likelihood"], model.num_pixels))
        out["bits_per_dim_sem"] = -float(evaluation.bits_per_dim(out["log_likelihood_sem"], model.num_pixels))
    return out


def ship(model_dir, name, retrain, *, num_samples=1000, seed=0, num_images=0, root=pretrained.SAVED_MODELS,
         data_dir=None, manual_dir=None, trained_commit=None):
    """Exports the best weights of `model_dir` into `<root>/<name>` with its card; returns the card.
    `num_images`: the card's number over this many test images (`card_subset`; 0: all), so that the
    test recomputing it stays cheap for large test sets."""
    model, config = checkpointing.load_model(model_dir, "best", compute_dtype="float32")
    export_dir = os.path.join(root, name)
    export.export_saved_model(model, export_dir, config=config.to_dict())
    results = checkpointing.load_results(model_dir)
    images = test_images(config, data_dir, manual_dir)
    number = measure(model, card_subset(images, num_images), num_samples, seed)
    training = results.get("training", {})
    test = results.get("test", {})
    arch, run_settings = config.model, config.training
    card = {
        "name": name, "dataset": config.data.dataset, "data_files": data_files(config.data.dataset),
        "model": arch.model, "prior": arch.prior, "likelihood": arch.likelihood,
        "input_shape": list(arch.image_shape), "num_components": arch.num_components,
        "z1_size": arch.z1_size, "z2_size": arch.z2_size, "init": arch.init,
        "budget": {"max_epochs": run_settings.epochs, "warmup_epochs": run_settings.warmup_epochs,
                   "early_stopping_epochs": run_settings.early_stopping_epochs,
                   "epochs_trained": training.get("epochs_trained"), "best_epoch": training.get("best_epoch"),
                   "stop_reason": training.get("stop_reason")},
        "training": {"optimizer": run_settings.optimizer, "lr": run_settings.lr, "batch_size": run_settings.batch_size,
                     "seed": arch.seed, "compute_dtype": arch.compute_dtype},
        "test": number,
        "run_test": {k: test.get(k) for k in ("log_likelihood", "log_likelihood_sem", "bits_per_dim", "eval_samples",
                                               "num_examples", "active_units", "components_in_use",
                                               "pseudo_inputs_moved") if k in test},
        "trained_with_commit": trained_commit, "shipped_with_commit": git_commit(),
        "retrain": retrain, "shipped": datetime.date.today().isoformat(),
    }
    checkpointing.write_json(os.path.join(export_dir, pretrained.CARD_FILE), card)
    _pictures(model, images, export_dir, seed)
    with open(os.path.join(export_dir, "README.md"), "w") as f:
        f.write(card_markdown(card))
    return card


def _pictures(model, images, export_dir, seed):
    samples = model.sample(64, seed=seed).numpy()
    scale = pictures.default_scale(model.image_shape[0])
    pictures.save_png(os.path.join(export_dir, "samples.png"), pictures.image_grid(samples, 8, scale=scale))
    if priors.has_pseudo_inputs(model.prior_name):
        means = model.encode_top(images[:1000])[0].numpy()
        usage = evaluation.component_usage(model, means)
        order = np.argsort(-usage, kind="stable")
        u = model.prior_layer.pseudo_inputs().numpy()[order]
        pictures.save_png(os.path.join(export_dir, "pseudo_inputs.png"),
                          pictures.image_grid(u[:100], 10, scale=scale))


def describe(number):
    if "bits_per_dim" in number:
        return f"{number['bits_per_dim']:.4f} ± {number['bits_per_dim_sem']:.4f} bits/dim"
    return f"{number['log_likelihood']:.2f} ± {number['log_likelihood_sem']:.2f} nats"


def card_markdown(card):
    """The model card (README.md) from `card.json`'s numbers."""
    test, budget, training = card["test"], card["budget"], card["training"]
    files = "\n".join(f"| `{n}` | `{h}` |" for n, h in card["data_files"]) or "| (not a paper dataset) | |"
    run_test = card.get("run_test") or {}
    run_line = ""
    if run_test.get("log_likelihood") is not None:
        value = (f"{run_test['bits_per_dim']:.4f} bits/dim" if run_test.get("bits_per_dim") is not None
                 else f"{run_test['log_likelihood']:.2f} nats")
        run_line = (f"\nThe run's own end-of-training evaluation (S = {run_test.get('eval_samples')}, "
                    f"{run_test.get('num_examples')} test images): {value}; active units "
                    f"{run_test.get('active_units')}; components in use {run_test.get('components_in_use')}.\n")
    return f"""# {card['name']}

{_PAPER_NAMES.get(card['model'], card['model'])} with the {card['prior']} prior on \
{card['dataset']} ({'x'.join(map(str, card['input_shape']))}, {card['likelihood']} likelihood), \
trained at the paper's budget by tfvamp. A SavedModel with the signatures of `scripts/export.py`
(`sample`, `reconstruct`, `encode`, `log_likelihood`, `pseudo_inputs`), served by TensorFlow
alone.

```sh
python scripts/sample.py --saved_model saved_models/{card['name']} --num_samples 64 --output samples.png
```

```python
import tfvamp
model, config = tfvamp.load_pretrained("{card['name']}")   # a Keras model, float32
```

## Test log-likelihood

**{describe(test)}** (log p(x) = {test['log_likelihood']:.2f} ± {test['log_likelihood_sem']:.2f} nats per image):
importance sampling with S = {test['num_samples']} samples per image (batch i of 100 images seeded
{test['seed']} + i), over {test['num_images']} test images (`tfvamp.model_cards.card_subset`: every
k-th in file order; all of them when that is the whole split); ± one standard error over the images. `tests/test_pretrained.py` recomputes it from these files in a fresh process.
{run_line}
## Data

`{card['dataset']}`, the paper's splits, read from the original files (docs/data.md):

| file | sha256 |
|---|---|
{files}

## Model and training

| | |
|---|---|
| model | `{card['model']}`, z1 {card['z1_size']}, z2 {card['z2_size']} |
| prior | `{card['prior']}`, K = {card['num_components']} |
| initialisation | `{card['init']}` |
| optimizer | {training['optimizer']}, lr {training['lr']}, batch {training['batch_size']}, seed {training['seed']}, {training['compute_dtype']} |
| budget | up to {budget['max_epochs']} epochs, warm-up {budget['warmup_epochs']}, early stopping after {budget['early_stopping_epochs']} |
| trained | {budget['epochs_trained']} epochs ({budget['stop_reason']}); these are the weights of epoch {budget['best_epoch']} (best validation loss) |
| trained with tfvamp commit | `{card['trained_with_commit']}` |
| shipped with tfvamp commit | `{card['shipped_with_commit']}` |

Re-train it:

```sh
{card['retrain']}
```

## Pictures

`samples.png`: 64 samples from the prior (a component drawn by the mixture weights, then its
latent), decoded as means. `pseudo_inputs.png`: the first 100 pseudo-inputs, the most used
(by the test images' posterior means) first.
"""
