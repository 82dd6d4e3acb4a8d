"""Exports a trained run as a SavedModel that TensorFlow serves without tfvamp: `tfvamp-export`,
`python scripts/export.py`.

    tfvamp-export --model_dir runs/mnist_hvae_vamp [--export_dir saved_models/mnist_hvae_vamp]

Signatures: sample(num_samples, seed), reconstruct(images), encode(images),
log_likelihood(images, num_samples), metadata(), and pseudo_inputs() for VampPrior priors
(see tfvamp/export.py and docs/evaluation.md). Then, e.g.:

    tfvamp-sample --saved_model saved_models/mnist_hvae_vamp --num_samples 64 --output samples.png
"""
from tfvamp import console

console.quiet()  # before TensorFlow starts its work

from absl import flags  # noqa: E402

from tfvamp import cli  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Run directory written by scripts/train.py.")
flags.DEFINE_string("export_dir", None, "SavedModel directory (default: saved_models/<basename of model_dir>).")
flags.DEFINE_enum("which", "best", ("best", "latest"), "Best weights or the newest checkpoint.")
flags.DEFINE_integer("max_samples", 4096, "The exported `sample` refuses requests for more images.", lower_bound=1)
flags.DEFINE_integer("max_importance_samples", 100_000, "The exported `log_likelihood` refuses more importance "
                     "samples.", lower_bound=1)
flags.mark_flag_as_required("model_dir")


def _main(argv):
    del argv
    from tfvamp import checkpointing  # pylint: disable=import-outside-toplevel
    from tfvamp import export  # pylint: disable=import-outside-toplevel
    from tfvamp import priors  # pylint: disable=import-outside-toplevel

    model, config = checkpointing.load_model(FLAGS.model_dir, FLAGS.which)
    export_dir = FLAGS.export_dir or checkpointing.default_export_dir(FLAGS.model_dir)
    export.export_saved_model(model, export_dir, config.to_dict(), max_samples=FLAGS.max_samples,
                              max_importance_samples=FLAGS.max_importance_samples)
    print(f"SavedModel written to {export_dir}")
    print(f"  model={model.model_name} prior={model.prior_name} likelihood={model.likelihood_name} "
          f"image_shape={list(model.image_shape)}")
    names = ["sample", "reconstruct", "encode", "log_likelihood", "metadata"]
    if priors.has_pseudo_inputs(model.prior_name):
        names.append("pseudo_inputs")
    print(f"  signatures: {', '.join(names)}")


def main():
    cli.run(_main, __name__)


if __name__ == "__main__":
    main()
