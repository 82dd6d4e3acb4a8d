"""Prepare the tfvamp TFDS datasets ahead of time from the original files: `tfvamp-prepare-data`,
`python scripts/prepare_data.py`.

    tfvamp-prepare-data --manual_dir=/path/to/originals [--data_dir=...]
    tfvamp-prepare-data --datasets=static_mnist,frey_faces

Without --datasets, prepares every dataset whose original files are found (or that is already
prepared) and lists the others as skipped. A thin wrapper over `tfvamp.data.prepare`; see
docs/data.md for file names and folders. Exit status 1 if any dataset failed.
"""
import os
import sys
import time

from tfvamp import console

console.quiet()  # before TensorFlow starts its work

from absl import app, flags, logging  # noqa: E402

from tfvamp import cli  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("manual_dir", None, "Folder with the original files (default: $TFVAMP_MANUAL_DIR).")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets).")
flags.DEFINE_list("datasets", None, "Comma list of datasets (default: all whose files are present).")
flags.DEFINE_bool("overwrite", False, "Rebuild datasets that are already prepared.")


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # TFDS logs every shard at INFO; -v 0 shows it all
        logging.set_verbosity(logging.WARNING)
    from tfvamp import data  # pylint: disable=import-outside-toplevel

    start = time.perf_counter()
    manual = FLAGS.manual_dir or os.environ.get(data.MANUAL_DIR_ENV)
    print(f"original files: {manual or '(no --manual_dir / $TFVAMP_MANUAL_DIR: TFDS default)'}", flush=True)
    try:
        timings = data.prepare(FLAGS.datasets, data_dir=FLAGS.data_dir, manual_dir=FLAGS.manual_dir,
                               overwrite=FLAGS.overwrite, echo=lambda s: print(s, flush=True))
    except ValueError as e:  # unknown dataset name
        print(f"error: {e}", file=sys.stderr)
        return 2
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"prepared {len(timings)} dataset(s) in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


def main():
    cli.run(_main, __name__)


if __name__ == "__main__":
    main()
