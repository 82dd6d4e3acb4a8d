"""Compute precision: which parts of a model run in bfloat16, and what `auto` picks on this machine.

Variables are float32 in every mode (checkpoints restore across modes); a mode only says in
which dtype each part *computes*. The parts (`PARTS`), each float32 or bfloat16:

| part               | what it is                                                                     |
|--------------------|--------------------------------------------------------------------------------|
| `hidden`           | every gated hidden layer not named below (matmuls, convolutions, gates)       |
| `first_layer`      | the first layer of each network that reads the image x (its input is cast too) |
| `prior_encoder`    | the pass of the top encoder over the K pseudo-inputs that gives the VampPrior's component means and variances; float32 runs that whole pass (layers and head) in float32, bfloat16 runs it like the data's pass |
| `mean_heads`       | the mean half of every Gaussian head (q(z|x), p(z1|z2))                         |
| `variance_heads`   | the log-variance half of every Gaussian head                                   |
| `output_layer`     | the decoder's output layer (`ImageHead`: logits or logistic parameters)        |
| `weight_gradients` | the weight gradients of bfloat16 dense layers: bfloat16 takes them from the bfloat16 matmul (float32 accumulation inside oneDNN, rounded to bfloat16 once, then cast to the float32 variable); float32 computes them with a float32 matmul of the (bfloat16) activations and output gradients |

Densities (log p(x|z), log q, the mixture prior's log-density), the loss, the optimizer
(AdamNormGrad casts each gradient to its float32 variable before normalising) and the
importance sampler's accumulation are float32 (float64) in every mode.

Modes (`--compute_dtype`):

* `float32`: every part float32.
* `bfloat16`: the first version of mixed precision: every hidden layer (`hidden`,
  `first_layer`, `prior_encoder`) in bfloat16, heads and output layer float32.
* `mixed`: the measured per-part policy (`MIXED`; docs/benchmarks.md has the measurements):
  bfloat16 everywhere but the Gaussian heads (means and log-variances of q and p(z1|z2)), and
  for 8-bit (discretized logistic) data also the first layer (`MIXED_8BIT`): bfloat16 holds
  {0, 1} exactly but not (k + 0.5) / 256, and trained on Frey Faces that rounding cost 2.8 and
  4.1 nats per image (two seeds) where a float32 first layer cost none (docs/results.md).
* `auto` (the default): `mixed` where the hardware has bfloat16 units (a GPU of compute
  capability >= 8.0, or a CPU with AMX or AVX512-BF16), else `float32` (`choose`).
* `bfloat16_except:PART,PART`: every part bfloat16 but the listed ones (for measuring;
  `bfloat16_except:` alone is all-bfloat16).
"""
import dataclasses
import os

FLOAT32, BFLOAT16 = "float32", "bfloat16"
PARTS = ("hidden", "first_layer", "prior_encoder", "mean_heads", "variance_heads", "output_layer",
         "weight_gradients")
MODES = ("auto", "float32", "bfloat16", "mixed")
CONCRETE_MODES = ("float32", "bfloat16", "mixed")
EXCEPT_PREFIX = "bfloat16_except:"
# The environment can pin what `auto` picks (tests pin it, so that they run alike on every machine).
AUTO_ENV = "TFVAMP_AUTO_COMPUTE_DTYPE"
MIN_BF16_COMPUTE_CAPABILITY = (8, 0)  # Ampere: bfloat16 tensor cores
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _all(dtype):
    return {part: dtype for part in PARTS}


# The measured policy (docs/benchmarks.md, "Where bfloat16 costs likelihood, part by part"): no
# part's bfloat16 cost stood out of the noise of training, and at evaluation all of them together
# cost 0.17 +- 0.06 nats per Frey image. The Gaussian heads stay float32 (their matmuls are a
# negligible share of the time, and they set q's and p(z1|z2)'s variances, which the importance
# weights divide by); everything that costs time is bfloat16, the output layer included (0.05
# nats at evaluation; a third of the importance sampler's matmul time in the MLP models).
MIXED = dict(_all(BFLOAT16), mean_heads=FLOAT32, variance_heads=FLOAT32)
# Inputs that bfloat16 cannot hold exactly (8-bit pixels (k + 0.5) / 256 need 9 significant bits,
# bfloat16 keeps 8): the layers that read them stay float32. Measured in paired paper-budget runs
# of Frey VAE + VampPrior (docs/results.md, "Mixed precision"): MIXED -2.8 and -4.1 nats per image
# against float32, this policy -1.1 and +5.0 (seeds 14, 15; paired s.e. 1.0-1.4).
MIXED_8BIT = dict(MIXED, first_layer=FLOAT32)
_MODE_POLICIES = {
    "float32": _all(FLOAT32),
    "bfloat16": dict(_all(BFLOAT16), mean_heads=FLOAT32, variance_heads=FLOAT32, output_layer=FLOAT32),
    "mixed": MIXED,
}


def check_mode(mode, allow_auto=True):
    """`mode` if it names a mode (or a `bfloat16_except:` list of known parts); else ValueError."""
    mode = str(mode)
    if mode.startswith(EXCEPT_PREFIX):
        parts = [p for p in mode[len(EXCEPT_PREFIX):].split(",") if p]
        unknown = sorted(set(parts) - set(PARTS))
        if unknown:
            raise ValueError(f"compute_dtype {mode!r}: unknown part(s) {unknown}; parts are {', '.join(PARTS)}.")
        return mode
    if mode not in (MODES if allow_auto else CONCRETE_MODES):
        choices = ", ".join(MODES if allow_auto else CONCRETE_MODES)
        raise ValueError(f"compute_dtype must be one of {choices} (or {EXCEPT_PREFIX}PART,...), got {mode!r}.")
    return mode


@dataclasses.dataclass(frozen=True)
class Policy:
    """The compute dtype of every part of a model (`PARTS`), from a concrete mode name.

    `dtype(part)` is 'float32' or 'bfloat16'; `keras(part)` the Keras dtype policy of the
    layers of that part ('float32' or 'mixed_bfloat16': float32 variables either way).
    """

    mode: str
    # False for data that bfloat16 cannot represent exactly (8-bit grey levels): `mixed` then
    # keeps the first layer in float32 (MIXED_8BIT). Other modes ignore it.
    exact_inputs: bool = True

    def __post_init__(self):
        check_mode(self.mode, allow_auto=False)

    @property
    def dtypes(self):
        if self.mode.startswith(EXCEPT_PREFIX):
            kept = [p for p in self.mode[len(EXCEPT_PREFIX):].split(",") if p]
            return dict(_all(BFLOAT16), **{p: FLOAT32 for p in kept})
        if self.mode == "mixed" and not self.exact_inputs:
            return dict(MIXED_8BIT)
        return dict(_MODE_POLICIES[self.mode])

    def dtype(self, part):
        return self.dtypes[part]

    def keras(self, part):
        return "mixed_bfloat16" if self.dtype(part) == BFLOAT16 else "float32"

    def uses_bfloat16(self):
        return BFLOAT16 in self.dtypes.values()


# ---- what `auto` picks ----------------------------------------------------------------------------
def cpu_info(path="/proc/cpuinfo"):
    """(CPU model name, set of its bfloat16 flags among `CPU_BF16_FLAGS`) from /proc/cpuinfo."""
    name, flags = None, set()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name is None:
                    name = value.strip()
                elif key.strip() == "flags":
                    flags |= set(value.split()) & set(CPU_BF16_FLAGS)
    except OSError:
        pass
    if name is None:
        import platform  # pylint: disable=import-outside-toplevel
        name = platform.processor() or platform.machine() or "unknown CPU"
    return name, flags


def gpu_info():
    """[(GPU name, compute capability tuple or None)] of the visible GPUs (TensorFlow's view)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device) or {}
        gpus.append((details.get("device_name", device.name), details.get("compute_capability")))
    return gpus


def hardware():
    """What `choose` looks at: {'cpu': name, 'cpu_bf16': sorted flags, 'gpus': [(name, cc)]}."""
    name, flags = cpu_info()
    return {"cpu": name, "cpu_bf16": sorted(flags), "gpus": gpu_info()}


@dataclasses.dataclass(frozen=True)
class Choice:
    """A resolved `--compute_dtype`: the concrete `mode`, what was `requested`, the `device` the
    decision was about (CPU or GPU model) and the `reason`, for the console and results.json."""

    requested: str
    mode: str
    device: str
    reason: str

    def as_dict(self):
        return dataclasses.asdict(self)


def choose(hw):
    """`auto`'s decision from `hardware()`-shaped facts: (mode, device, reason).

    Training runs on the GPUs when there are any, so they decide: bfloat16 tensor cores from
    compute capability 8.0 on. Without a GPU, the CPU: AMX or AVX512-BF16 run bfloat16
    matmuls at 1.5-2x (AMX more) the float32 rate; without them bfloat16 is emulated and slower.
    """
    gpus = hw.get("gpus") or []
    if gpus:
        name, capability = gpus[0]
        capability = tuple(capability) if capability else None
        if capability and all(tuple(c) >= MIN_BF16_COMPUTE_CAPABILITY for _, c in gpus if c):
            return "mixed", name, (f"GPU {name} (compute capability {capability[0]}.{capability[1]}) has bfloat16 "
                                   "tensor cores")
        shown = f"{capability[0]}.{capability[1]}" if capability else "unknown"
        return "float32", name, (f"GPU {name} (compute capability {shown}) has no bfloat16 tensor cores "
                                 "(they start at 8.0)")
    cpu, flags = hw.get("cpu", "unknown CPU"), set(hw.get("cpu_bf16") or ())
    if flags:
        units = " and ".join(f for f in CPU_BF16_FLAGS if f in flags)
        return "mixed", cpu, f"CPU {cpu} has bfloat16 units ({units})"
    return "float32", cpu, f"CPU {cpu} has no bfloat16 units (neither amx_bf16 nor avx512_bf16)"


def resolve(requested="auto", query=hardware, environ=None):
    """The concrete mode for `requested` (a `Choice`). `auto` asks `query()` (injectable for
    tests) unless the environment variable `TFVAMP_AUTO_COMPUTE_DTYPE` pins it."""
    requested = check_mode(requested)
    environ = os.environ if environ is None else environ
    mode, device, reason = choose(query())
    if requested != "auto":
        return Choice(requested, requested, device, "given explicitly")
    pinned = environ.get(AUTO_ENV)
    if pinned:
        return Choice("auto", check_mode(pinned, allow_auto=False), device, f"{AUTO_ENV}={pinned} in the environment")
    return Choice("auto", mode, device, reason)


def for_likelihood(mode, likelihood):
    """The `Policy` of a concrete mode for data of this likelihood: Bernoulli data is binary, which
    bfloat16 holds exactly; the discretized logistics' 8-bit levels it does not (`MIXED_8BIT`)."""
    return Policy(mode, exact_inputs=likelihood == "bernoulli")


def policy(mode, exact_inputs=True):
    """The `Policy` of a mode; `auto` is resolved on this machine first."""
    return Policy(resolve(mode).mode, exact_inputs)
