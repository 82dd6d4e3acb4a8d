"""The command-line programs: each module's `main()` is both a console script (setup.py:
`tfvamp-train`, `tfvamp-evaluate`, ...) and what `scripts/<name>.py` runs.

    tfvamp-train --flagfile configs/frey.cfg          # = python scripts/train.py --flagfile configs/frey.cfg

Each module defines its absl flags when imported and runs through `run()`, which shows them
and the module's docstring under --help as the program's own, whichever name started it.
"""
import sys


def run(main, module_name):
    """absl's `app.run(main)`, with `module_name`'s docstring and key flags shown by --help (absl
    shows those of `__main__` and of sys.argv[0]: scripts/X.py or the console script)."""
    from absl import app  # pylint: disable=import-outside-toplevel
    from absl import flags  # pylint: disable=import-outside-toplevel

    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    sys.modules["__main__"].__doc__ = sys.modules[module_name].__doc__
    app.run(main)
