"""Trains a VAE with a VampPrior (Tomczak & Welling, 2018): `tfvamp-train`, `python scripts/train.py`.

    tfvamp-train --flagfile configs/frey.cfg
    tfvamp-train --flagfile configs/frey.cfg --flagfile configs/quick.cfg     # into runs/quick/...
    tfvamp-train --dataset static_mnist --model hvae --prior vampprior --model_dir runs/x

Re-running a command with the same --model_dir resumes that run from its last checkpoint.
Several machines: set TF_CONFIG on each and run the same command (see docs/training.md).
All flags: tfvamp/flags.py, or --helpfull.
"""
from tfvamp import console

console.quiet()  # before TensorFlow starts its work

from absl import flags  # noqa: E402

from tfvamp import cli  # noqa: E402
from tfvamp import flags as tflags  # noqa: E402

tflags.define_flags()
flags.adopt_module_key_flags(tflags)  # --help lists the training flags
FLAGS = flags.FLAGS


def _main(argv):
    if len(argv) > 1:
        return console.fail(f"unexpected arguments {argv[1:]} (flags are --name=value). {console.FLAG_HINT}", 2)
    from tfvamp import data  # pylint: disable=import-outside-toplevel
    from tfvamp import distribute  # pylint: disable=import-outside-toplevel
    # Before anything touches TensorFlow (reading your own images to infer settings does): the
    # threads, then the logical CPU split; the strategy follows the config.
    try:
        distribute.set_threads(FLAGS.threads)
    except ValueError as e:
        return console.fail(f"--threads: {e}\n{console.FLAG_HINT}", 2)
    devices = distribute.split_cpu(FLAGS.cpu_devices) if FLAGS.cpu_devices > 1 else None
    try:
        config = tflags.config_from_flags(FLAGS)
    except data.DataError as e:  # the images named by --dataset cannot be used
        return console.fail(str(e), 1)
    except ValueError as e:
        return console.fail(f"{e}\n{console.FLAG_HINT}", 2)
    # pylint: disable=import-outside-toplevel
    from tfvamp import run
    from tfvamp import training
    strategy = distribute.make_strategy(config.training.strategy, devices=devices)
    try:
        run.run(config, strategy)
    except KeyboardInterrupt:
        return console.fail("Interrupted before training started; nothing was saved.", 130)
    except training.TrainingInterrupted as e:
        return console.fail(str(e), 130)
    except (training.TrainingDiverged, run.RunError, data.DataError) as e:
        return console.fail(str(e), 1)
    return 0


def main():
    cli.run(_main, __name__)


if __name__ == "__main__":
    main()
