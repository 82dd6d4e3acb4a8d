"""A whole training run: data, training, test-set evaluation of the best weights, export.

    from tfvamp import flags as tflags, run
    config = tflags.validate_config(tflags.default_config(dataset="frey_faces", model="hvae",
                                                          model_dir="runs/frey"))
    results = run.run(config)

`run(config)` is what `scripts/train.py` does. It resumes: re-running a config whose training
finished goes on with whatever step did not complete (evaluation, export). Its record is
`<model_dir>/results.json`: `training` (how training ended), `test` (the evaluation of the best
weights) and `saved_model` (where the export is), written once at the end of the run through
`checkpointing.update_results`.
"""
import json
import os

import tensorflow as tf

from tfvamp import checkpointing
from tfvamp import distribute
from tfvamp import evaluation
from tfvamp import export
from tfvamp import priors
from tfvamp import training


def check_resume(model_dir, config):
    """Refuses a model_dir that holds a different run (other model settings or dataset)."""
    path = os.path.join(model_dir, checkpointing.CONFIG_FILE)
    if not os.path.exists(path):
        return
    old = checkpointing.load_config(model_dir)
    keys = checkpointing.MODEL_KEYS + ("dataset",)
    diff = {k: (old.get(k), config.get(k)) for k in keys
            if json.loads(json.dumps(old.get(k))) != json.loads(json.dumps(config.get(k)))}
    if diff:
        changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"{model_dir} holds a run with different settings ({changes}). Use a new --model_dir "
                         "for a new run; the same settings resume the old one.")


def load_data(config):
    """The run's data: (splits, pseudo_inputs_data).

    `splits` is `tfvamp.data.load`'s (each epoch's order from --seed and the epoch);
    `pseudo_inputs_data` holds all training images when the prior needs them
    (`priors.needs_training_images`), else None.
    """
    from tfvamp import data  # pylint: disable=import-outside-toplevel  (TFDS is slow to import)
    splits = data.load(config["dataset"], config["batch_size"], seed=config["seed"],
                       eval_batch_size=config["eval_batch_size"], data_dir=config["data_dir"],
                       manual_dir=config["manual_dir"], shuffle_train=True, drop_remainder=True,
                       max_steps_per_epoch=config["max_steps_per_epoch"])
    pseudo_inputs_data = None
    if priors.needs_training_images(config["prior"], config["pseudo_inputs_init"]):
        # All training images: the model draws K of them at random, seeded by --seed.
        pseudo_inputs_data = data.as_numpy(config["dataset"], "train", data_dir=config["data_dir"],
                                           manual_dir=config["manual_dir"])
    return splits, pseudo_inputs_data


def evaluate_best(model, config, test_dataset, summary, num_test=None):
    """The best weights on the test set: the `test` section of results.json.

    Also writes TensorBoard scalars `test/...` and pictures (`<model_dir>/pictures`, TensorBoard
    `test_images/...`).
    """
    model_dir = config["model_dir"]
    cap = int(config["max_eval_batches"])
    dataset = test_dataset.take(cap) if cap else test_dataset
    test, per_example = evaluation.evaluate(model, dataset, num_samples=config["eval_samples"],
                                            chunk_size=config["eval_chunk_size"] or None,
                                            progress=config["progress"])
    step = int(summary.get("epochs_trained", 0))
    writer = tf.summary.create_file_writer(os.path.join(model_dir, checkpointing.TENSORBOARD_DIR))
    evaluation.write_summaries(writer, test, step=step, prefix="test")
    # Random positions: static MNIST's test file is in class order, its first batch one digit.
    images = evaluation.pick_images(dataset, int(config["eval_batch_size"]), test["num_examples"],
                                    seed=int(config["seed"]))
    pixel = config["model"] == "pixelhvae"  # autoregressive sampling is slow on CPU
    evaluation.write_pictures(model, images, os.path.join(model_dir, "pictures"),
                              log_likelihoods=per_example["log_likelihood"], writer=writer, step=step,
                              num_samples=min(int(config["num_images"]), 16 if pixel else 64),
                              seed=int(config["seed"]), prefix="test_images")
    writer.close()
    partial = num_test is not None and test["num_examples"] < int(num_test)
    return dict(test, best_epoch=summary.get("best_epoch"), eval_samples=int(config["eval_samples"]),
                partial_test_set=bool(partial))


def _pending_steps(config, summary, done):
    """Which of 'evaluate' and 'export' this run still owes, given results.json's `done`."""
    pending = []
    test = done.get("test") or {}
    if config["evaluate"] and not (test.get("best_epoch") == summary.get("best_epoch")
                                   and test.get("eval_samples") == int(config["eval_samples"])):
        pending.append("evaluate")
    export_dir = config["export_dir"]
    if config["export"] and not (done.get("saved_model") == export_dir
                                 and export.is_complete(export_dir)):
        pending.append("export")
    return pending


def _finish(config, splits, summary):
    """Evaluation and export of the best weights, whichever is still to do. Returns the new
    results.json sections."""
    model_dir = config["model_dir"]
    pending = _pending_steps(config, summary, checkpointing.load_results(model_dir))
    sections = {"training": {k: v for k, v in summary.items() if k != "already_complete"}}
    if not pending:
        if summary.get("already_complete"):
            print(f"Nothing left to do: results are in {os.path.join(model_dir, checkpointing.RESULTS_FILE)}",
                  flush=True)
        return sections
    model, _ = checkpointing.load_model(model_dir, "best")  # once, for both steps
    if "evaluate" in pending:
        num_test = (getattr(getattr(splits, "info", None), "num_examples", None) or {}).get("test")
        test = sections["test"] = evaluate_best(model, config, splits.test, summary, num_test)
        gray = f", {test['bits_per_dim']:.4f} bits/dim" if isinstance(test.get("bits_per_dim"), float) else ""
        print(f"Test log-likelihood of the best model (epoch {summary['best_epoch']}): "
              f"{test['log_likelihood']:.4f} nats{gray}; ELBO {test['elbo']:.4f}.", flush=True)
    if "export" in pending:
        sections["saved_model"] = export.export_saved_model(
            model, config["export_dir"], config=config, max_samples=config["export_max_samples"],
            max_importance_samples=config["export_max_importance_samples"])
        print(f"SavedModel of the best model: {sections['saved_model']}", flush=True)
    return sections


def run(config, strategy=None, splits=None, pseudo_inputs_data=None):
    """Runs (or resumes) a whole training run described by a validated `config`.

    `splits` (and `pseudo_inputs_data`) default to the config's dataset (`load_data`); pass
    them to train on other data.

    Returns the results dict (also `<model_dir>/results.json`).
    Raises `training.TrainingDiverged` on a non-finite training loss.
    """
    strategy = strategy or distribute.make_strategy(config["strategy"])  # first: before any TF op
    model_dir = config["model_dir"]
    is_chief = distribute.task_info(strategy)[2]
    check_resume(model_dir, config)
    if is_chief:
        checkpointing.save_config(model_dir, config)
    if splits is None:
        splits, loaded = load_data(config)
        pseudo_inputs_data = loaded if pseudo_inputs_data is None else pseudo_inputs_data
    trainer = training.Trainer(config, strategy, pseudo_inputs_data)
    print(f"Training {config['model']} + {config['prior']} on {config['dataset']} with "
          f"{type(strategy).__name__} ({trainer.num_replicas} replica(s){', XLA' if trainer.jit_compile else ''}) "
          f"into {model_dir}", flush=True)
    summary = trainer.fit(splits)
    results = {"training": summary}
    if is_chief:
        results = checkpointing.update_results(model_dir, _finish(config, splits, summary))
    trainer.agree([0.0])  # workers wait for the chief
    return results
