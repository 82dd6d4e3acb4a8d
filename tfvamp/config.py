"""A run's configuration, typed and frozen.

    config = tflags.validate_config(tflags.default_config(dataset="frey_faces", model_dir="runs/frey"))
    config.model.z1_size, config.training.lr, config.data.dataset    # attributes, not string keys
    config.to_dict()                       # the flat dict written as <model_dir>/config.json
    RunConfig.from_dict(json.load(f))      # reads config.json, of today's runs and older ones

`RunConfig` holds one part of each kind: `data` (`DataConfig`, what images and how to read
them), `model` (`ModelConfig`, the model's constructor arguments: the one model schema),
`training` (`TrainingConfig`), `evaluation` (`EvaluationConfig`), `export` (`ExportConfig`),
and the record `precision` (how `--compute_dtype` was resolved). Every flag of
`tfvamp.flags.FLAGS` is a field of exactly one part, under its flag name; the model's image
shape is the one field that is not a flag (validation fills it in from the dataset).

The flat dict (config.json) names the image shape `input_shape`, as it always has, so that
older tfvamp versions and tools read new files; `from_dict` takes `image_shape` too. Values a
config made before a setting existed means are in `LEGACY_DEFAULTS`, in this one place.
"""
import dataclasses
from typing import Any, Optional, Tuple

from tfvamp import initializers

# What a config.json (or a model's Keras config) without the key was made with: runs from
# before --init used Keras' initialisation, runs from before --compute_dtype computed in float32.
LEGACY_DEFAULTS = {"init": initializers.LEGACY, "compute_dtype": "float32"}
# The image shape's name in the flat dict (config.json) and its other accepted name.
SHAPE_KEY = "input_shape"
MODEL_SHAPE_KEY = "image_shape"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What the run trains on and how the images are read.

    Attributes:
      dataset: a paper dataset's name (`tfvamp.data.NAMES`), or folder:PATH, array:PATH, tfds:NAME.
      channels: your images: 1 grey, 3 RGB, 0 as the files are.
      image_size: your images: 'HxW' to resize or crop them to; '' = as they are.
      resize: your images with `image_size`: 'resize' or 'crop'.
      binarize: your grey images: 'none', 'dynamic' or 'static'.
      validation_fraction, test_fraction: your images without those splits: the fraction carved out.
      skip_unreadable: your image folder: leave out unreadable files.
      data_dir: where prepared datasets are cached (None: TFDS' default).
      manual_dir: where the original dataset files are (None: $TFVAMP_MANUAL_DIR).
    """
    dataset: Optional[str]
    channels: int
    image_size: str
    resize: str
    binarize: str
    validation_fraction: float
    test_fraction: float
    skip_unreadable: bool
    data_dir: Optional[str]
    manual_dir: Optional[str]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model: its family and its constructor's arguments, the schema that
    `LatentVariableModel.get_config()` writes and `from_config` reads.

    Attributes:
      model: the family, one of `tfvamp.models.MODELS` (the class; not a constructor argument).
      prior: one of `tfvamp.priors.PRIORS`, on the top latent.
      likelihood: one of `tfvamp.likelihoods.LIKELIHOODS` (None until validation: the dataset's).
      image_shape: `(H, W, C)` ints, the data's (None until validation fills it in).
      num_components: K, pseudo-inputs or mixture components.
      z1_size, z2_size: latent sizes.
      pseudo_inputs_mean, pseudo_inputs_std: N(mean, std) of the pseudo-inputs' initialisation
        (None until validation: the dataset's).
      seed: seeds initialisation, data order and noise.
      compute_dtype: a `tfvamp.precision` mode ('auto' until validation resolves it).
      init: how the weights start: `tfvamp.initializers`.
    """
    model: str
    prior: str
    likelihood: Optional[str]
    image_shape: Optional[Tuple[int, int, int]]
    num_components: int
    z1_size: int
    z2_size: int
    pseudo_inputs_mean: Optional[float]
    pseudo_inputs_std: Optional[float]
    seed: Optional[int]
    compute_dtype: str
    init: str

    @classmethod
    def keras_keys(cls):
        """The model's constructor arguments in its Keras config (every field but `model`)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "model")

    def keras_config(self):
        """The model's Keras config (constructor arguments, `image_shape` a tuple) from this."""
        values = {name: getattr(self, name) for name in self.keras_keys()}
        values[MODEL_SHAPE_KEY] = None if self.image_shape is None else tuple(int(d) for d in self.image_shape)
        return values


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How the run trains, where it writes, on what hardware, what it logs.

    Attributes:
      model_dir: the run directory (config, checkpoints, best weights, TensorBoard, results).
      init_from: a SavedModel export or pretrained name to copy matching weights from ('' = none).
      pseudo_inputs_init: 'random' or 'data' (VampPrior pseudo-inputs from training images).
      optimizer: one of `tfvamp.optimizers.OPTIMIZERS`.
      lr: learning rate.
      batch_size: global training batch size.
      epochs: maximum number of epochs.
      warmup_epochs: KL warm-up length (0 = none).
      early_stopping_epochs: epochs without a better validation loss before stopping.
      max_steps_per_epoch: cap on steps per epoch (0 = a full pass).
      strategy: a `tfvamp.distribute.STRATEGIES` name.
      cpu_devices: logical CPU devices to mirror over (0 = don't split).
      threads: cores TensorFlow may use (0 = all).
      jit_compile: 'auto', 'true' or 'false'.
      image_every_epochs: TensorBoard image grids every this many epochs.
      num_images: images per grid.
      picture_scale: enlargement of every tile in pictures (0 = automatic).
      checkpoints_to_keep: epoch checkpoints kept.
      progress: a progress bar per epoch.
    """
    model_dir: Optional[str]
    init_from: str
    pseudo_inputs_init: str
    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    warmup_epochs: int
    early_stopping_epochs: int
    max_steps_per_epoch: int
    strategy: str
    cpu_devices: int
    threads: int
    jit_compile: str
    image_every_epochs: int
    num_images: int
    picture_scale: int
    checkpoints_to_keep: int
    progress: bool


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Validation during training and the test-set evaluation at the end.

    Attributes:
      evaluate: evaluate the best weights on the test set at the end.
      eval_samples: importance samples per test image.
      eval_chunk_size: importance samples per network pass (0 = automatic).
      eval_batch_size: batch size of validation and test evaluation.
      max_eval_batches: cap on validation and test batches (0 = the whole split).
    """
    evaluate: bool
    eval_samples: int
    eval_chunk_size: int
    eval_batch_size: int
    max_eval_batches: int


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """The SavedModel export at the end of a run.

    Attributes:
      export: export the best weights at the end.
      export_dir: where (None until validation: `<model_dir>/saved_model`).
      export_max_samples: the `sample` signature's largest request.
      export_max_importance_samples: the `log_likelihood` signature's largest S.
    """
    export: bool
    export_dir: Optional[str]
    export_max_samples: int
    export_max_importance_samples: int


PARTS = (("data", DataConfig), ("model", ModelConfig), ("training", TrainingConfig),
         ("evaluation", EvaluationConfig), ("export", ExportConfig))
# {field name: the RunConfig attribute of its part}; names are unique across parts.
PART_OF = {f.name: part for part, cls in PARTS for f in dataclasses.fields(cls)}


def flag_defaults():
    """{flag name: default} of `tfvamp.flags.FLAGS` (the one table of defaults)."""
    from tfvamp import flags  # pylint: disable=import-outside-toplevel  (flags builds on this module)

    return {name: default for name, _, default, _, _ in flags.FLAGS}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run's configuration: one part of each kind and the record of its precision.

    Attributes:
      data, model, training, evaluation, export: the parts (every flag is in exactly one).
      precision: how `compute_dtype` was resolved ({requested, mode, device, reason}, as in
        results.json), or None before validation.
      extra: keys of a config.json this version does not know (kept, and written back).
    """
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig
    evaluation: EvaluationConfig
    export: ExportConfig
    precision: Optional[dict] = None
    extra: Any = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, flat, defaults=None):
        """A RunConfig from a flat dict (config.json, or flag values), old formats included.

        `input_shape` or `image_shape` is the image shape; a missing `init` or `compute_dtype`
        is `LEGACY_DEFAULTS`' (what runs before the flag used); any other missing flag is its
        default (`defaults`, default `flag_defaults()`); unknown keys are kept in `extra`.
        """
        flat = dict(flat)
        shape = flat.pop(MODEL_SHAPE_KEY, None)
        legacy_shape = flat.pop(SHAPE_KEY, None)
        shape = legacy_shape if shape is None else shape
        values = dict(flag_defaults() if defaults is None else defaults)
        values.update(LEGACY_DEFAULTS)
        values.update(flat)
        if values.get("init") is None:
            values["init"] = LEGACY_DEFAULTS["init"]
        values[MODEL_SHAPE_KEY] = None if shape is None else tuple(int(d) for d in shape)
        precision = values.pop("precision", None)
        parts = {part: part_cls(**{f.name: values.pop(f.name) for f in dataclasses.fields(part_cls)})
                 for part, part_cls in PARTS}
        return cls(**parts, precision=precision, extra=values)

    @classmethod
    def from_flags(cls, flag_values):
        """The (unvalidated) RunConfig of parsed absl flags with the training flags defined."""
        names = flag_defaults()
        return cls.from_dict({name: flag_values[name].value for name in names}, defaults=names)

    def to_dict(self):
        """The flat, JSON-able dict written as config.json: every flag, `input_shape` (a list,
        once known), `precision` (once resolved) and the kept unknown keys."""
        flat = dict(self.extra)
        for part, _ in PARTS:
            flat.update({f.name: getattr(getattr(self, part), f.name)
                         for f in dataclasses.fields(getattr(self, part))})
        shape = flat.pop(MODEL_SHAPE_KEY)
        if shape is not None:
            flat[SHAPE_KEY] = [int(d) for d in shape]
        if self.precision is not None:
            flat["precision"] = self.precision
        return flat

    def replace(self, **changes):
        """A new RunConfig with `changes`, named as flat fields (`lr=1e-3`, `image_shape=...`)
        or as `precision` / `extra`; routed to their parts with `dataclasses.replace`."""
        top = {k: changes.pop(k) for k in ("precision", "extra") if k in changes}
        unknown = sorted(set(changes) - set(PART_OF))
        if unknown:
            raise ValueError(f"Unknown config fields {unknown}; known: {sorted(PART_OF)}.")
        for part, _ in PARTS:
            mine = {k: v for k, v in changes.items() if PART_OF[k] == part}
            if mine:
                top[part] = dataclasses.replace(getattr(self, part), **mine)
        return dataclasses.replace(self, **top)

    def model_differences(self, other):
        """{name: (self's, other's)} of the model fields and the dataset where they differ:
        what makes `other` another run than this one. `compute_dtype` is not among them: the
        variables are float32 in every mode, so any mode resumes any run."""
        mine, theirs = dataclasses.asdict(self.model), dataclasses.asdict(other.model)
        for values, config in ((mine, self), (theirs, other)):
            values.pop("compute_dtype")
            values["dataset"] = config.data.dataset
        return {k: (mine[k], theirs[k]) for k in mine if _plain(mine[k]) != _plain(theirs[k])}


def _plain(value):
    """Tuples as lists (a JSON round trip's view), for comparing."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def as_run_config(config):
    """`config` as a RunConfig: a RunConfig as it is, a flat dict through `RunConfig.from_dict`."""
    return config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
