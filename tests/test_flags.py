"""Flags: one table, every value and combination validated with a clear message, the paper's
flagfiles, and the script refusing bad flags before doing anything."""
import glob
import os

import pytest
from absl import flags as absl_flags

from helpers import GRAY_INFO, Info, ROOT, run_script
from tfvamp import flags as tflags


def test_flag_names_are_read_off_the_definitions():
    fv = absl_flags.FlagValues()
    tflags.define_flags(fv)
    assert set(fv) - {"flagfile", "undefok"} == set(tflags.FLAG_NAMES)
    defaults = tflags.default_config().to_dict()
    assert set(defaults) == set(tflags.FLAG_NAMES)
    for name in tflags.FLAG_NAMES:
        assert defaults[name] == fv[name].default, name
    assert len(set(tflags.FLAG_NAMES)) == len(tflags.FLAG_NAMES)


def test_flags_are_validated_with_clear_messages(tmp_path):
    def error(**overrides):
        info = overrides.pop("info", GRAY_INFO)
        with pytest.raises(ValueError) as e:
            tflags.validate_config(tflags.default_config(**dict(dict(dataset=info.name, model_dir=str(tmp_path)),
                                                                **overrides)), info=info)
        return str(e.value)

    assert "K (--num_components) must be an integer >= 1, got 0" in error(num_components=0)
    assert "unknown prior 'vampire'" in error(prior="vampire")
    tiny = Info("frey_faces", (2, 2, 1), "discretized_logistic", 0.5, 0.02, GRAY_INFO.num_examples, False)
    assert "--model=convhvae needs images of at least 3x3" in error(model="convhvae", info=tiny)
    assert "--likelihood=bernoulli cannot model frey_faces" in error(likelihood="bernoulli")
    assert "--batch_size=100 exceeds the 40 training images" in error()
    assert "only 40" in error(prior="vampprior_data", batch_size=10)
    assert "outside [0, 1]" in error(pseudo_inputs_mean=-0.05, batch_size=10)
    assert "--lr must be a positive number" in error(lr=0.0, batch_size=10)
    assert "--model_dir is required" in error(model_dir=None, batch_size=10)
    # Several problems are reported together.
    message = error(z1_size=0, epochs=0, batch_size=10)
    assert "--z1_size" in message and "--epochs" in message


def test_script_rejects_bad_flags_before_doing_anything(tmp_path):
    result = run_script(["--flagfile=configs/frey.cfg", "--prior=vampire", f"--model_dir={tmp_path}"], timeout=120)
    assert result.returncode != 0 and "vampprior" in result.stderr and "prior" in result.stderr
    result = run_script(["--flagfile=configs/frey.cfg", "--num_components=0", f"--model_dir={tmp_path}"], timeout=120)
    assert result.returncode != 0 and "K (--num_components) must be an integer >= 1" in result.stderr
    assert not os.listdir(tmp_path)


EXPERIMENTS = [f"{d}_{m}_{p}" for d in tflags.DATASETS for m in ("vae", "hvae", "convhvae", "pixelhvae")
               for p in ("standard", "vampprior")] + \
    [f"static_mnist_hvae_{p}" for p in ("mog", "vampprior_data", "weighted_vampprior")]


def parse_flagfiles(*paths):
    fv = absl_flags.FlagValues()
    tflags.define_flags(fv)
    fv(["train.py"] + [f"--flagfile={os.path.join(ROOT, p)}" for p in paths])
    return tflags.config_from_flags(fv).to_dict()


def test_every_paper_experiment_has_a_flagfile_with_the_papers_hyperparameters():
    names = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(ROOT, "configs", "*.cfg"))}
    assert names == set(EXPERIMENTS) | {"frey", "quick"}
    pseudo = {"static_mnist": (0.05, 0.01), "dynamic_mnist": (0.05, 0.01), "omniglot": (0.05, 0.01),
              "caltech101_silhouettes": (0.5, 0.02), "frey_faces": (0.5, 0.02), "histopathology": (0.4, 0.05)}
    for name in EXPERIMENTS:
        config = parse_flagfiles(f"configs/{name}.cfg")
        assert f"{config['dataset']}_{config['model']}_{config['prior']}" == name
        assert (config["lr"], config["batch_size"], config["epochs"], config["warmup_epochs"],
                config["early_stopping_epochs"], config["optimizer"]) == (5e-4, 100, 2000, 100, 50, "adam_norm_grad")
        assert (config["z1_size"], config["z2_size"], config["num_components"], config["eval_samples"]) == \
            (40, 40, 500, 5000)
        assert (config["pseudo_inputs_mean"], config["pseudo_inputs_std"]) == pseudo[config["dataset"]]
        assert config["model_dir"] == f"runs/{name}"
    frey = parse_flagfiles("configs/frey.cfg")
    assert (frey["dataset"], frey["model"], frey["prior"], frey["likelihood"], frey["input_shape"]) == \
        ("frey_faces", "hvae", "vampprior", "discretized_logistic", [28, 20, 1])
    quick = parse_flagfiles("configs/frey.cfg", "configs/quick.cfg")
    assert (quick["model"], quick["epochs"], quick["max_steps_per_epoch"], quick["model_dir"]) == \
        ("hvae", 2, 5, "runs/quick/frey_faces_hvae_vampprior")


def test_no_flagfile_restates_a_default():
    """A preset says only what makes its experiment differ: a line equal to the flag's default
    (or to its dataset's default, for the settings the dataset's record gives) fails."""
    from tfvamp import data  # pylint: disable=import-outside-toplevel

    kinds = {name: (kind, default) for name, kind, default, _, _ in tflags.FLAGS}
    paths = glob.glob(os.path.join(ROOT, "configs", "*.cfg")) + glob.glob(os.path.join(ROOT, "configs", "*", "*.cfg"))
    assert len(paths) > 50
    restated = []
    for path in paths:
        lines = [line.strip() for line in open(path) if line.startswith("--")]
        values = dict(line[2:].split("=", 1) for line in lines)
        dataset = values.get("dataset")
        for name, text in values.items():
            assert name in kinds, (path, name)
            kind, default = kinds[name]
            value = {"integer": int, "float": float}.get(kind, str)(text)
            if default is not None and value == default:
                restated.append((os.path.relpath(path, ROOT), name))
            elif dataset in data.NAMES and name in tflags.DATASET_DEFAULTS and \
                    value == getattr(data.get_info(dataset), name):
                restated.append((os.path.relpath(path, ROOT), name))
    assert not restated, restated


def test_frey_cfg_is_the_frey_hvae_vampprior_experiment():
    frey = parse_flagfiles("configs/frey.cfg")
    experiment = parse_flagfiles("configs/frey_faces_hvae_vampprior.cfg")
    assert {k: v for k, v in frey.items() if k not in ("model_dir", "export_dir")} == \
        {k: v for k, v in experiment.items() if k not in ("model_dir", "export_dir")}
    assert (frey["seed"], frey["init"], frey["model_dir"]) == (14, "release", "runs/frey")
