"""A whole training run: data, training, test-set evaluation of the best weights, export.

    from tfvamp import flags as tflags, run
    config = tflags.validate_config(tflags.default_config(dataset="frey_faces", model="hvae",
                                                          model_dir="runs/frey"))
    results = run.run(config)          # config: a validated `tfvamp.config.RunConfig`

`run(config)` is what `scripts/train.py` does. It resumes: re-running a config whose training
finished goes on with whatever step did not complete (evaluation, export). Its record is
`<model_dir>/results.json`: `training` (how training ended), `test` (the evaluation of the best
weights) and `saved_model` (where the export is), written once at the end of the run through
`checkpointing.update_results`.
"""
import contextlib
import math
import os
import shutil

import numpy as np
import tensorflow as tf

from tfvamp import checkpointing
from tfvamp import distribute
from tfvamp import evaluation
from tfvamp import evaluation_writers
from tfvamp import export
from tfvamp import flags
from tfvamp import image_sources
from tfvamp import precision
from tfvamp import priors
from tfvamp import training
from tfvamp.datasets.facts import SPLITS


class RunError(RuntimeError):
    """A run cannot start: the message names the problem and the fix."""


def check_resume(model_dir, config):
    """Refuses a model_dir that holds a different run (other model settings or dataset)."""
    path = os.path.join(model_dir, checkpointing.CONFIG_FILE)
    if not os.path.exists(path):
        return
    diff = checkpointing.load_config(model_dir).model_differences(config)
    if diff:
        changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        raise RunError(f"{model_dir} holds a run with different settings ({changes}). Use a new --model_dir "
                       "for a new run; the same settings resume the old one.")


# Settings inferred from the data, which a later tfvamp may compute to the last bits differently
# (the pseudo-input initialisation of your own images: float32 sums then, float64 now).
_INFERRED_FLOATS = ("pseudo_inputs_mean", "pseudo_inputs_std")


def keep_run_init(model_dir, config):
    """The config a resumed run trains with: the initialisation it started with (`keras` for runs
    from before --init existed), and the stored pseudo-input initialisation where today's
    inference gives the same numbers to 1e-6. Only a new run's first weights depend on them."""
    path = os.path.join(model_dir, checkpointing.CONFIG_FILE)
    if not os.path.exists(path):
        return config
    old = checkpointing.load_config(model_dir).model
    stored = old.init  # `keras` for a config.json without one (tfvamp.config.LEGACY_DEFAULTS)
    if stored != config.model.init:
        print(f"Resumed run: it started with --init={stored} ({checkpointing.CONFIG_FILE}), which it keeps.",
              flush=True)
    kept = {}
    for name in _INFERRED_FLOATS:
        a, b = getattr(old, name), getattr(config.model, name)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6,
                                                                                        abs_tol=1e-9):
            kept[name] = a
    return config.replace(init=stored, **kept)


def keep_run_precision(model_dir, config):
    """The config a resumed run trains with: its stored compute_dtype wins over `auto`'s choice.

    A run started in float32 (or under another default) continues in it unless --compute_dtype
    was given explicitly (the variables are float32 in every mode, so any mode can resume any run).
    """
    record = config.precision or {}
    path = os.path.join(model_dir, checkpointing.CONFIG_FILE)
    if record.get("requested") != "auto" or not os.path.exists(path):
        return config
    stored = checkpointing.load_config(model_dir).model.compute_dtype  # float32 when config.json has none
    if stored == config.model.compute_dtype:
        return config
    reason = (f"resumed run: keeps the compute_dtype it started with ({stored}, {checkpointing.CONFIG_FILE}); "
              f"auto would pick {config.model.compute_dtype} ({record.get('reason')}); pass --compute_dtype to "
              "change it")
    return config.replace(compute_dtype=stored, precision=dict(record, mode=stored, reason=reason))


def describe_precision(config):
    """One line for the console: the mode, what was asked, the device and the reason."""
    record = config.precision or {}
    mode = config.model.compute_dtype
    asked = record.get("requested", mode)
    device = f" on {record['device']}" if record.get("device") else ""
    line = f"Precision: {mode} (--compute_dtype={asked}{device}: {record.get('reason', 'given explicitly')})"
    policy = precision.for_likelihood(mode, config.model.likelihood)
    if policy.uses_bfloat16():
        kept = [part for part, dtype in policy.dtypes.items() if dtype == precision.FLOAT32]
        line += f"; in float32: {', '.join(kept) if kept else 'no part'}, densities and the optimizer"
    return line


def load_data(config):
    """The run's data: (splits, pseudo_inputs_data).

    `splits` is `tfvamp.data.load`'s (each epoch's order from --seed and the epoch);
    `pseudo_inputs_data` holds all training images when the prior needs them
    (`priors.needs_training_images`), else None.
    """
    from tfvamp import data  # pylint: disable=import-outside-toplevel  (TFDS is slow to import)
    options = flags.source_options(config)
    source = config.data
    splits = data.load(source.dataset, config.training.batch_size, seed=config.model.seed,
                       eval_batch_size=config.evaluation.eval_batch_size, data_dir=source.data_dir,
                       manual_dir=source.manual_dir, shuffle_train=True, drop_remainder=True,
                       max_steps_per_epoch=config.training.max_steps_per_epoch, options=options)
    pseudo_inputs_data = None
    if priors.needs_training_images(config.model.prior, config.training.pseudo_inputs_init):
        # All training images: the model draws K of them at random, seeded by --seed.
        pseudo_inputs_data = data.training_images(source.dataset, data_dir=source.data_dir,
                                                  manual_dir=source.manual_dir, options=options)
    return splits, pseudo_inputs_data


def describe_data(config, info):
    """The data section of results.json: what was read and what was inferred from it."""
    model = config.model
    return {"dataset": config.data.dataset, "input_shape": list(info.image_shape),
            "num_examples": dict(info.num_examples), "carved_splits": list(getattr(info, "carved", ())),
            "carve_seed": image_sources.SPLIT_SEED if getattr(info, "carved", ()) else None,
            "pixels": getattr(info, "pixels", None), "likelihood": model.likelihood,
            "pseudo_inputs_init": [model.pseudo_inputs_mean, model.pseudo_inputs_std],
            "storage": getattr(info, "storage", "memory"), "notes": list(getattr(info, "notes", ())),
            "skipped_files": list(getattr(info, "skipped", ()))}


def _print_data(section):
    sizes = " / ".join(f"{section['num_examples'].get(s, 0)} {s}" for s in SPLITS)
    carved = (f" ({' and '.join(section['carved_splits'])} carved from the training images, seed "
              f"{section['carve_seed']})" if section["carved_splits"] else "")
    shape = "x".join(map(str, section["input_shape"]))
    storage = ""
    if section.get("storage") == "streamed":
        storage = "; streamed from its prepared shards"
    elif image_sources.is_source(section["dataset"]):
        storage = "; held in memory"
    skipped = section.get("skipped_files") or []
    extra = "".join(f"; {note}" for note in section.get("notes") or [])
    if skipped:
        extra += (f"; skipped {len(skipped)} unreadable file(s) (--skip_unreadable): {', '.join(skipped[:3])}"
                  + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""))
    print(f"Data: {section['dataset']}, {shape}, {sizes}{carved}; likelihood {section['likelihood']}; "
          f"pseudo-inputs start from N({section['pseudo_inputs_init'][0]:.3g}, "
          f"{section['pseudo_inputs_init'][1]:.3g}){storage}{extra}", flush=True)


def evaluate_best(model, config, test_dataset, summary, num_test=None):
    """The best weights on the test set: the `test` section of results.json.

    Also writes TensorBoard scalars `test/...` and pictures (`<model_dir>/pictures`, TensorBoard
    `test_images/...`).
    """
    model_dir, settings, training_part = config.training.model_dir, config.evaluation, config.training
    cap = int(settings.max_eval_batches)
    dataset = test_dataset.take(cap) if cap else test_dataset
    test, per_example = evaluation.evaluate(model, dataset, num_samples=settings.eval_samples,
                                            chunk_size=settings.eval_chunk_size or None,
                                            progress=training_part.progress)
    pixel = config.model.model == "pixelhvae"  # autoregressive sampling is slow on CPU
    write_evaluation(
        model, dataset, test, per_example, os.path.join(model_dir, checkpointing.TENSORBOARD_DIR),
        os.path.join(model_dir, "pictures"), step=int(summary.get("epochs_trained", 0)), prefix="test",
        pictures=dict(num_shown=int(settings.eval_batch_size), seed=int(config.model.seed),
                      num_samples=min(int(training_part.num_images), 16 if pixel else 64),
                      scale=training_part.picture_scale or None, prefix="test_images"))
    partial = num_test is not None and test["num_examples"] < int(num_test)
    return dict(test, best_epoch=summary.get("best_epoch"), eval_samples=int(settings.eval_samples),
                partial_test_set=bool(partial))


def write_evaluation(model, dataset, summary, per_example, log_dir, picture_dir, *, step=0, prefix="eval",
                     pictures=None):
    """Records an evaluation of `model` on `dataset` (`evaluation.evaluate`'s summary and
    per-example arrays): the numbers as TensorBoard scalars `<prefix>/...` in `log_dir`; with
    `pictures` (a dict: `num_shown` images picked at seeded random positions, test sets being
    sorted by class, and the other keyword arguments of `evaluation_writers.write_pictures`, whose `seed`
    also picks them) the PNG files in `picture_dir`, the same pictures in TensorBoard, and the
    projector of the top latent means. Returns {picture: path}.
    """
    writer = tf.summary.create_file_writer(log_dir)
    evaluation_writers.write_summaries(writer, summary, step=step, prefix=prefix)
    paths = {}
    if pictures is not None:
        options = dict(pictures)
        shown = options.pop("num_shown")
        images = evaluation.pick_images(dataset, shown, summary["num_examples"], seed=options.get("seed", 0))
        paths = evaluation_writers.write_pictures(model, images, picture_dir,
                                                  log_likelihoods=per_example["log_likelihood"],
                                                  usage=per_example.get("component_usage"), writer=writer, step=step,
                                                  **options)
    writer.close()
    if pictures is not None:
        paths["projector"] = _write_projector(model, dataset, per_example, log_dir)
    return paths


def _write_projector(model, dataset, per_example, log_dir):
    """The test set's top latent means in TensorBoard's projector (at most PROJECTOR_MAX_IMAGES)."""
    limit = evaluation_writers.PROJECTOR_MAX_IMAGES
    images = [x.numpy() for x in dataset.unbatch().take(limit).batch(1000)]
    images = images and tf.concat(images, 0).numpy()
    if len(images) < 2:
        return None
    means = per_example[f"{model.top_latent_name}_mean"][:limit]
    return evaluation_writers.write_projector(log_dir, means, images, per_example["log_likelihood"][:limit])


# What `evaluate_run` does unless told otherwise (scripts/evaluate.py's flags).
EVALUATE_DEFAULTS = dict(split="test", which="best", images=None, eval_samples=5000, chunk_size=0, compute_dtype=None,
                         prior_dtype="float32", eval_batch_size=0, max_batches=0, dataset=None, data_dir=None,
                         manual_dir=None, pictures=True, num_pictures=64, num_reconstructions=32, num_pseudo_inputs=8,
                         samples_per_pseudo_input=8, picture_scale=0, seed=0, progress=True)


def evaluate_run(model_dir, **options):
    """Evaluates a run directory's weights on a split (or on the images of a .npy file) and
    writes `results.json` ({split: summary and what it was of}, merged), `eval_<split>.npz`
    (per-example arrays), `pictures/` and `tensorboard/eval/` (scalars, pictures, projector).

    `options` (`EVALUATE_DEFAULTS`) are scripts/evaluate.py's flags; `seed` seeds the importance
    samples (batch i uses seed + i), the pictures and the choice of images shown.
    Returns {"split", "summary", "results_path", "pictures": {name: path}}.
    """
    unknown = set(options) - set(EVALUATE_DEFAULTS)
    if unknown:
        raise ValueError(f"Unknown evaluate_run options {sorted(unknown)}; known: {sorted(EVALUATE_DEFAULTS)}.")
    o = dict(EVALUATE_DEFAULTS, **options)
    model, config = checkpointing.load_model(model_dir, o["which"], compute_dtype=o["compute_dtype"])
    batch_size = o["eval_batch_size"] or int(config.evaluation.eval_batch_size or 100)
    split, dataset = _evaluation_data(config, o, batch_size)
    if o["max_batches"]:
        dataset = dataset.take(o["max_batches"])
    pictures = dict(num_shown=o["num_reconstructions"], num_samples=o["num_pictures"],
                    num_reconstructions=o["num_reconstructions"], num_pseudo_inputs=o["num_pseudo_inputs"],
                    samples_per_pseudo_input=o["samples_per_pseudo_input"], seed=o["seed"],
                    scale=o["picture_scale"] or None, prefix=f"eval_{split}")
    summary, per_example = evaluation.evaluate(
        model, dataset, num_samples=o["eval_samples"], chunk_size=o["chunk_size"] or None,
        prior_dtype=o["prior_dtype"], seed=o["seed"], progress=o["progress"])
    record = _evaluation_record(model_dir, config, summary, o)
    results_path = evaluation_writers.save_results(model_dir, summary, split, **record)
    np.savez(os.path.join(model_dir, f"eval_{split}.npz"), **per_example)
    paths = write_evaluation(model, dataset, summary, per_example,
                             os.path.join(model_dir, checkpointing.TENSORBOARD_DIR, "eval"),
                             os.path.join(model_dir, "pictures"), prefix=f"eval_{split}",
                             pictures=pictures if o["pictures"] else None)
    return {"split": split, "summary": summary, "results_path": results_path, "pictures": paths}


def _evaluation_data(config, o, batch_size):
    """(split name, batches): the run's dataset split (only that split is built), or a .npy file
    `[N, H, W, C]` in [0, 1] named by its base name."""
    if o["images"]:
        images = np.load(o["images"]).astype(np.float32)
        return (os.path.splitext(os.path.basename(o["images"]))[0],
                tf.data.Dataset.from_tensor_slices(images).batch(batch_size))
    from tfvamp import data  # pylint: disable=import-outside-toplevel  (TFDS is slow to import)
    name = o["dataset"] or config.data.dataset
    if not name:
        raise ValueError("config.json names no dataset; pass --dataset.")
    options = flags.source_options(config.replace(dataset=name))
    return o["split"], data.load_split(name, o["split"], batch_size, data_dir=o["data_dir"] or config.data.data_dir,
                                       manual_dir=o["manual_dir"] or config.data.manual_dir, options=options)


def _evaluation_record(model_dir, config, summary, o):
    """What an evaluation was of, stored beside its numbers."""
    from tfvamp import data  # pylint: disable=import-outside-toplevel

    checkpoint = checkpointing.checkpoint_path(model_dir, o["which"])
    known = checkpointing.load_results(model_dir).get("data", {}).get("num_examples", {})
    name = o["dataset"] or config.data.dataset
    if not known and name in data.NAMES:
        known = data.get_info(name).num_examples
    size = None if o["images"] else known.get(o["split"])
    try:
        best_epoch = int(tf.train.load_variable(checkpoint, "epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    except (ValueError, tf.errors.NotFoundError):
        best_epoch = None
    return {"checkpoint": os.path.relpath(checkpoint, model_dir), "best_epoch": best_epoch,
            "dataset": o["images"] or o["dataset"] or config.data.dataset, "eval_samples": o["eval_samples"],
            "partial_test_set": bool(o["max_batches"]) or (size is not None and summary["num_examples"] < size),
            "compute_dtype": config.model.compute_dtype, "prior_dtype": o["prior_dtype"],
            "seed": o["seed"]}


def _pending_steps(config, summary, done):
    """Which of 'evaluate' and 'export' this run still owes, given results.json's `done`."""
    pending = []
    test = done.get("test") or {}
    if config.evaluation.evaluate and not (test.get("best_epoch") == summary.get("best_epoch")
                                           and test.get("eval_samples") == int(config.evaluation.eval_samples)):
        pending.append("evaluate")
    export_dir = config.export.export_dir
    if config.export.export and not (done.get("saved_model") == export_dir and export.is_complete(export_dir)):
        pending.append("export")
    return pending


def _finish(config, splits, summary):
    """Evaluation and export of the best weights, whichever is still to do. Returns the new
    results.json sections."""
    model_dir = config.training.model_dir
    pending = _pending_steps(config, summary, checkpointing.load_results(model_dir))
    sections = {"training": {k: v for k, v in summary.items() if k != "already_complete"}}
    if not pending:
        if summary.get("already_complete"):
            print(f"Nothing left to do: results are in {os.path.join(model_dir, checkpointing.RESULTS_FILE)}",
                  flush=True)
        return sections
    model, _ = checkpointing.load_model(model_dir, "best")  # once, for both steps
    try:
        _evaluate_and_export(model, config, splits, summary, pending, sections)
    except KeyboardInterrupt:
        steps = " and ".join({"evaluate": "the test-set evaluation", "export": "the export"}[p] for p in pending)
        raise training.TrainingInterrupted(
            f"Interrupted during {steps}, after training; re-run the same command to finish (training is "
            "complete and will not run again).") from None
    return sections


def _evaluate_and_export(model, config, splits, summary, pending, sections):
    """Each step's section goes into results.json as soon as it is done: a run killed during
    the export does not evaluate again when re-run."""
    if "evaluate" in pending:
        num_test = (getattr(getattr(splits, "info", None), "num_examples", None) or {}).get("test")
        test = sections["test"] = evaluate_best(model, config, splits.test, summary, num_test)
        gray = f", {test['bits_per_dim']:.4f} bits/dim" if isinstance(test.get("bits_per_dim"), float) else ""
        print(f"Test log-likelihood of the best model (epoch {summary['best_epoch']}): "
              f"{test['log_likelihood']:.4f} nats{gray}; ELBO {test['elbo']:.4f}.", flush=True)
        checkpointing.update_results(config.training.model_dir, sections)
    if "export" in pending:
        settings = config.export
        sections["saved_model"] = export.export_saved_model(
            model, settings.export_dir, config=config.to_dict(), max_samples=settings.export_max_samples,
            max_importance_samples=settings.export_max_importance_samples)
        print(f"SavedModel of the best model: {sections['saved_model']}", flush=True)


def _check_writable(config, is_chief):
    """Before anything else, that the run's outputs can be written (not after hours of training)."""
    if not is_chief:
        return
    model_dir, settings = config.training.model_dir, config.export
    inside = os.path.abspath(str(settings.export_dir)).startswith(os.path.abspath(model_dir) + os.sep)
    try:  # an export elsewhere first (checking the run's folder creates it); one inside it after
        if settings.export and not inside:
            export.check_writable(settings.export_dir)
        checkpointing.check_writable(model_dir, "the run", "Choose another --model_dir.")
        if settings.export and inside:
            export.check_writable(settings.export_dir)
    except OSError as e:
        raise RunError(str(e)) from None


@contextlib.contextmanager
def _run_directory(model_dir, is_chief):
    """Holds the run directory's lock (chief only) and cleans a killed run's leftovers; a
    directory this run created is removed again if nothing was written into it."""
    created = not os.path.exists(model_dir)
    lock = checkpointing.RunLock(model_dir) if is_chief else contextlib.nullcontext()
    try:
        with lock:
            for path in checkpointing.remove_leftovers(model_dir):
                print(f"Removed {path}, left by a run that was killed while saving.", flush=True)
            yield
    except checkpointing.RunDirectoryBusy as e:
        raise RunError(str(e)) from None
    finally:
        if created and is_chief and os.path.isdir(model_dir) and not os.listdir(model_dir):
            shutil.rmtree(model_dir, ignore_errors=True)


def run(config, strategy=None, splits=None, pseudo_inputs_data=None):
    """Runs (or resumes) a whole training run described by a validated `config`.

    `splits` (and `pseudo_inputs_data`) default to the config's dataset (`load_data`); pass
    them to train on other data.

    Returns the results dict (also `<model_dir>/results.json`).
    Raises `training.TrainingDiverged` on a non-finite training loss.
    """
    strategy = strategy or distribute.make_strategy(config.training.strategy)  # first: before any TF op
    model_dir = config.training.model_dir
    is_chief = distribute.task_info(strategy)[2]
    config = keep_run_init(model_dir, config)
    check_resume(model_dir, config)
    config = keep_run_precision(model_dir, config)
    print(describe_precision(config), flush=True)
    _check_writable(config, is_chief)
    with _run_directory(model_dir, is_chief):
        try:
            if splits is None:
                splits, loaded = load_data(config)
                pseudo_inputs_data = loaded if pseudo_inputs_data is None else pseudo_inputs_data
        except KeyboardInterrupt:
            raise training.TrainingInterrupted("Interrupted while loading the data; nothing was saved.") from None
        data_section = describe_data(config, splits.info)
        _print_data(data_section)
        if is_chief:  # only once the data is there: a failed start leaves no config behind
            checkpointing.save_config(model_dir, config)
            checkpointing.update_results(model_dir, {"data": data_section, "precision": config.precision})
        trainer = training.Trainer(config, strategy, pseudo_inputs_data)
        print(f"Training {config.model.model} + {config.model.prior} on {config.data.dataset} with "
              f"{type(strategy).__name__} ({trainer.num_replicas} replica(s)"
              f"{', XLA' if trainer.jit_compile else ''}; {distribute.describe_threads()}) into {model_dir}", flush=True)
        summary = trainer.fit(splits)
        results = {"training": summary}
        if is_chief:
            results = checkpointing.update_results(model_dir, _finish(config, splits, summary))
            _print_where(config, results)
    trainer.agree([0.0])  # workers wait for the chief
    return results


def _print_where(config, results):
    """The run's outputs and how to look at them."""
    model_dir = config.training.model_dir
    rows = [("checkpoints", os.path.join(model_dir, checkpointing.CHECKPOINT_DIR)),
            ("best weights", os.path.join(model_dir, checkpointing.BEST_DIR)),
            ("results", os.path.join(model_dir, checkpointing.RESULTS_FILE))]
    if "test" in results:
        rows.append(("pictures", os.path.join(model_dir, "pictures")))
    rows.append(("TensorBoard", os.path.join(model_dir, checkpointing.TENSORBOARD_DIR)))
    if results.get("saved_model"):
        rows.append(("SavedModel", results["saved_model"]))
    print("\n".join(f"  {name:<13}{path}" for name, path in rows), flush=True)
    print(f"View the run: tensorboard --logdir {os.path.join(model_dir, checkpointing.TENSORBOARD_DIR)}", flush=True)
    if results.get("saved_model"):
        print(f"Sample from it: python scripts/sample.py --saved_model {results['saved_model']}", flush=True)
