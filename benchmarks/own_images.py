#!/usr/bin/env python
"""Own images at scale (issue 26, item 4): preparation time, time to the first training step,
peak memory and input-pipeline speed for folders of N 64x64 colour JPEGs.

    python benchmarks/own_images.py --sizes 10000,50000,200000 --root ../bench_images \
        --output_json own_images.json

Images: random 64x64 crops of the colour photographs that ship inside scikit-image (its data
folder, read from disk; nothing is downloaded), each at a random position, flipped at random
(left-right, up-down), brightness scaled by U(0.9, 1.1), saved as JPEG quality 90 in
sub-folders of 1000 files: `<root>/n<N>/d<k>/img_<i>.jpg`. A folder is made once and reused
(`<root>/n<N>/COMPLETE` marks a finished one).

For each N, with a fresh --data_dir, each in a fresh subprocess of this script that runs
scripts/train.py in-process (runpy) with

    --dataset folder:<root>/n<N> --model convhvae --prior vampprior --num_components 50
    --batch_size 100 --max_steps_per_epoch 3 --epochs 1 --noevaluate --noexport --noprogress
    --threads 1 --compute_dtype float32 --data_dir <fresh per N> --model_dir <fresh per run>

  preparation  first run: seconds from starting the subprocess until the prepared folder
               `<data_dir>/tfvamp_sources/folder_n<N>-<fingerprint>` exists (polled every
               50 ms; it appears by an atomic rename once every shard and meta.json are written);
               `prepare_call_s` in the JSON is the in-process duration of tfvamp.prepared.prepare.
  first step   second run (the source already prepared): seconds from starting the subprocess
               (interpreter start and imports included) to the return of the first
               `Trainer.train_step` (wrapped in the subprocess; the wrapper reads the step's
               result with .numpy(), so the step has finished).
  peak RSS     second run: the subprocess's ru_maxrss (os.wait4) from its start to the end of the
               epoch's 3 train steps: the process ends there (os._exit) unless --full_run, which
               adds validation over the whole validation split (20,000 images at N = 200k, about
               a minute per 1000 here) and the checkpoint.
  step img/s   second run: 100 images / the mean duration of train steps 2 and 3 (the real
               step: MirroredStrategy, AdamNormGrad; the first step traces and is excluded).
  pipeline     a third subprocess (--threads 1 as well): `tfvamp.data.load(...).epochs(1)` at
               batch 100, every batch of an epoch (no --max_steps_per_epoch cap), --warmup
               batches first (the shuffle buffer fills), then --pipeline_batches batches timed.

Sources of more than $TFVAMP_IN_MEMORY_MB (default 512 MB) of uint8 pixels are streamed from
their shards; smaller ones (10k images of 64x64x3 = 123 MB) are read into memory; the table says
which.
"""
import argparse
import json
import os
import runpy
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TRAIN_SCRIPT = os.path.join(REPO, "scripts", "train.py")
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
          "hubble_deep_field.jpg", "retina.jpg", "ihc.png")
SIZE = 64
PER_FOLDER = 1000
BATCH = 100
MARKER = "COMPLETE"


MODEL = ["convhvae"]  # --model


def train_flags(folder, data_dir, model_dir):
    return ["--dataset", f"folder:{folder}", "--model", MODEL[0], "--prior", "vampprior", "--num_components", "50",
            "--batch_size", str(BATCH), "--max_steps_per_epoch", "3", "--epochs", "1", "--noevaluate", "--noexport",
            "--noprogress", "--threads", "1", "--compute_dtype", "float32", "--data_dir", data_dir,
            "--model_dir", model_dir]


# ---- images -------------------------------------------------------------------------------------
def photographs():
    """The colour photographs bundled with scikit-image, as uint8 RGB arrays (read from the
    package's own data folder)."""
    import numpy as np
    import skimage.data
    from PIL import Image

    folder = os.path.dirname(skimage.data.__file__)
    out = []
    for name in PHOTOS:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            out.append(np.asarray(Image.open(path).convert("RGB")))
    if not out:
        raise SystemExit(f"no bundled photographs found in {folder}")
    return out


def make_folder(root, n, seed=0):
    """`<root>/n<n>`: n random 64x64 JPEG crops (module docstring); made once."""
    import numpy as np
    from PIL import Image

    folder = os.path.join(root, f"n{n}")
    if os.path.exists(os.path.join(folder, MARKER)):
        return folder, 0.0
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    photos = photographs()
    rng = np.random.default_rng([seed, n])
    for i in range(n):
        sub = os.path.join(folder, f"d{i // PER_FOLDER:04d}")
        if i % PER_FOLDER == 0:
            os.makedirs(sub, exist_ok=True)
        photo = photos[rng.integers(len(photos))]
        y = rng.integers(photo.shape[0] - SIZE + 1)
        x = rng.integers(photo.shape[1] - SIZE + 1)
        crop = photo[y:y + SIZE, x:x + SIZE]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < 0.5:
            crop = crop[::-1]
        crop = np.clip(crop.astype(np.float32) * rng.uniform(0.9, 1.1), 0, 255).astype(np.uint8)
        Image.fromarray(crop).save(os.path.join(sub, f"img_{i:06d}.jpg"), quality=90)
    with open(os.path.join(folder, MARKER), "w") as f:
        f.write(f"{n} images\n")
    return folder, time.perf_counter() - start


# ---- subprocesses ---------------------------------------------------------------------------------
def _vm_hwm_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def child_train(out_file, stop_after, argv):
    """scripts/train.py in this process, with timings of every train step and of preparation;
    with `stop_after` > 0 the process ends (os._exit) right after that many steps."""
    record = {"child_start": time.time(), "steps": [], "prepare_calls": []}

    def dump():
        record["vm_hwm_mb"] = _vm_hwm_mb()
        with open(out_file + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(out_file + ".tmp", out_file)

    from tfvamp import console
    console.quiet()  # before TensorFlow starts, as scripts/train.py does
    from tfvamp import prepared
    from tfvamp import training

    prepare = prepared.prepare

    def timed_prepare(spec, options, *args, **kwargs):
        root = prepared.root_dir(options.data_dir)  # a listing, not find(): no second fingerprint
        found = os.path.isdir(root) and any(".incomplete-" not in name for name in os.listdir(root))
        start = time.time()
        result = prepare(spec, options, *args, **kwargs)
        record["prepare_calls"].append({"start": start, "end": time.time(), "found": found})
        return result

    prepared.prepare = timed_prepare
    train_step = training.Trainer.train_step

    def timed_step(self, x):
        start = time.time()
        out = train_step(self, x)
        out.numpy()  # the step has finished
        record["steps"].append([start, time.time()])
        if stop_after and len(record["steps"]) >= stop_after:
            record["exit_code"], record["end"], record["stopped_after_steps"] = 0, time.time(), stop_after
            dump()
            sys.stdout.flush()
            os._exit(0)
        dump()
        return out

    training.Trainer.train_step = timed_step
    sys.argv = [TRAIN_SCRIPT] + argv
    code = 0
    try:
        runpy.run_path(TRAIN_SCRIPT, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    record["exit_code"] = code
    record["end"] = time.time()
    dump()
    return code


def child_pipeline(out_file, warmup, batches, argv):
    """Images per second of `tfvamp.data.load(...).epochs(1)` (module docstring)."""
    from tfvamp import console
    console.quiet()
    from absl import flags

    from tfvamp import data
    from tfvamp import distribute
    from tfvamp import flags as tflags

    tflags.define_flags()
    flags.FLAGS([TRAIN_SCRIPT] + argv)
    distribute.set_threads(flags.FLAGS.threads)
    config = tflags.config_from_flags(flags.FLAGS)
    options = tflags.source_options(config)
    splits = data.load(config.data.dataset, config.training.batch_size, seed=config.model.seed,
                       data_dir=config.data.data_dir, options=options)
    iterator = iter(splits.epochs(1))
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        x = next(iterator)
        images += int(x.shape[0])
    seconds = time.perf_counter() - start
    result = {"images": images, "seconds": seconds, "images_per_second": images / seconds,
              "storage": getattr(splits.info, "storage", "memory"), "num_examples": dict(splits.info.num_examples),
              "vm_hwm_mb": _vm_hwm_mb()}
    with open(out_file, "w") as f:
        json.dump(result, f)
    return 0


def _prepared_folder(data_dir):
    root = os.path.join(data_dir, "tfvamp_sources")
    try:
        names = os.listdir(root)
    except OSError:
        return None
    done = [n for n in names if ".incomplete-" not in n and os.path.isdir(os.path.join(root, n))]  # not the .lock
    return os.path.join(root, done[0]) if done else None


def run_child(args, log_path, watch_data_dir=None):
    """Runs this script as a subprocess; returns (wall seconds, prepared-folder seconds or None,
    ru_maxrss MB, exit status)."""
    with open(log_path, "w") as log:
        start = time.time()
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)] + args, stdout=log,
                                stderr=subprocess.STDOUT, cwd=REPO)
        appeared = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            now = time.time()
            if watch_data_dir and appeared is None and _prepared_folder(watch_data_dir):
                appeared = now - start
            if pid:
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return start, now - start, appeared, usage.ru_maxrss / 1024.0, proc.returncode


def _read(path):
    with open(path) as f:
        return json.load(f)


def _log_tail(path, lines=30):
    with open(path) as f:
        return "".join(f.readlines()[-lines:])


def measure(n, folder, work, warmup, batches, keep, stop_after):
    tag = f"n{n}"
    data_dir = os.path.join(work, f"data_{tag}")
    shutil.rmtree(data_dir, ignore_errors=True)
    os.makedirs(data_dir)
    row = {"n": n, "folder": folder, "data_dir": data_dir}
    for run in ("first", "second"):
        model_dir = os.path.join(work, f"model_{tag}_{run}")
        shutil.rmtree(model_dir, ignore_errors=True)
        timing = os.path.join(work, f"timing_{tag}_{run}.json")
        log = os.path.join(work, f"log_{tag}_{run}.txt")
        if os.path.exists(timing):
            os.remove(timing)
        start, wall, appeared, rss, code = run_child(["_train", timing, str(stop_after)] + train_flags(folder, data_dir, model_dir),
                                                     log, watch_data_dir=data_dir if run == "first" else None)
        if code != 0 or not os.path.exists(timing):
            raise SystemExit(f"{run} run for N={n} failed (exit {code}); log {log}:\n{_log_tail(log)}")
        t = _read(timing)
        steps = t["steps"]
        if len(steps) < 3:
            raise SystemExit(f"{run} run for N={n} made {len(steps)} step(s); log {log}:\n{_log_tail(log)}")
        durations = [b - a for a, b in steps]
        row[run] = {"wall_s": wall, "prepared_folder_s": appeared, "peak_rss_mb": rss,
                    "vm_hwm_at_exit_mb": t.get("vm_hwm_mb"), "child_start_s": t["child_start"] - start,
                    "prepare_calls": [{"start_s": c["start"] - start, "seconds": c["end"] - c["start"],
                                       "found": c["found"]} for c in t["prepare_calls"]],
                    "first_step_start_s": steps[0][0] - start, "first_step_end_s": steps[0][1] - start,
                    "step_seconds": durations, "step_images_per_second": 2 * BATCH / (durations[1] + durations[2]),
                    "log": log}
        if not keep:
            shutil.rmtree(model_dir, ignore_errors=True)
    out = os.path.join(work, f"pipeline_{tag}.json")
    log = os.path.join(work, f"log_{tag}_pipeline.txt")
    _, wall, _, rss, code = run_child(["_pipeline", out, str(warmup), str(batches)]
                                      + train_flags(folder, data_dir, os.path.join(work, f"model_{tag}_pipeline")), log)
    if code != 0:
        raise SystemExit(f"pipeline run for N={n} failed (exit {code}); log {log}:\n{_log_tail(log)}")
    row["pipeline"] = dict(_read(out), peak_rss_mb=rss, wall_s=wall)
    prepared_dir = _prepared_folder(data_dir)
    row["prepared_mb"] = sum(os.path.getsize(os.path.join(prepared_dir, f)) for f in os.listdir(prepared_dir)) / 2**20
    row["storage"] = row["pipeline"]["storage"]
    row["preparation_s"] = row["first"]["prepared_folder_s"]
    row["first_step_s"] = row["second"]["first_step_end_s"]
    row["peak_rss_mb"] = row["second"]["peak_rss_mb"]
    row["pipeline_images_per_second"] = row["pipeline"]["images_per_second"]
    row["step_images_per_second"] = row["second"]["step_images_per_second"]
    row["ratio"] = row["pipeline_images_per_second"] / row["step_images_per_second"]
    if not keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return row


HEADER = ("| N | storage | preparation s | second run to first step s | peak RSS MB | pipeline img/s | step img/s "
          "| ratio |\n|---|---|---|---|---|---|---|---|")


def table_line(r):
    prep = f"{r['preparation_s']:.1f}" if r["preparation_s"] is not None else "n/a"
    return (f"| {r['n']:,} | {r['storage']} | {prep} | {r['first_step_s']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['pipeline_images_per_second']:,.0f} | {r['step_images_per_second']:.0f} | {r['ratio']:.1f} |")


def goals(rows):
    lines = []
    worst = max(rows, key=lambda r: r["first_step_s"])
    lines.append(f"second run starts training within 10 s at every N: {'met' if worst['first_step_s'] < 10 else 'not met'}"
                 f" (slowest {worst['first_step_s']:.1f} s at N = {worst['n']:,})")
    by_n = {r["n"]: r for r in rows}
    if 10000 in by_n and 200000 in by_n:
        growth = by_n[200000]["peak_rss_mb"] - by_n[10000]["peak_rss_mb"]
        lines.append(f"peak RSS grows by less than 300 MB from 10k to 200k: {'met' if growth < 300 else 'not met'} "
                     f"({growth:+.0f} MB)")
    low = min(rows, key=lambda r: r["ratio"])
    lines.append(f"pipeline delivers at least 5x what the step consumes: {'met' if low['ratio'] >= 5 else 'not met'} "
                 f"(lowest ratio {low['ratio']:.1f} at N = {low['n']:,})")
    return lines


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_train":
        return child_train(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    if len(sys.argv) > 1 and sys.argv[1] == "_pipeline":
        return child_pipeline(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,50000,200000", help="comma-separated image counts")
    parser.add_argument("--root", default="../bench_images", help="where the image folders are made (keep them out of the repository)")
    parser.add_argument("--work", default=None, help="data_dir / model_dir / logs (default: <root>/../bench_runs)")
    parser.add_argument("--output_json", default=None)
    parser.add_argument("--warmup", type=int, default=30, help="pipeline batches before timing")
    parser.add_argument("--pipeline_batches", type=int, default=300, help="pipeline batches timed")
    parser.add_argument("--keep", action="store_true", help="keep the prepared copies and run folders")
    parser.add_argument("--full_run", action="store_true",
                        help="let each training run finish (validation over the whole validation split, checkpoint); "
                             "default: end the process right after its 3rd train step")
    parser.add_argument("--model", default="convhvae", help="model family of the runs (the issue's start-up "
                        "example is the VAE; the step the pipeline must feed is convHVAE's)")
    args = parser.parse_args()
    MODEL[0] = args.model
    sizes = [int(s) for s in args.sizes.split(",") if s]
    work = args.work or os.path.join(os.path.dirname(os.path.abspath(args.root)), "bench_runs")
    if os.path.commonpath([os.path.abspath(args.root), REPO]) == REPO:
        raise SystemExit("--root must lie outside the repository")
    os.makedirs(args.root, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    rows = []
    for n in sizes:
        folder, made = make_folder(args.root, n)
        if made:
            print(f"made {n} images in {folder} in {made:.0f} s", flush=True)
        row = measure(n, folder, work, args.warmup, args.pipeline_batches, args.keep, 0 if args.full_run else 3)
        rows.append(row)
        print(HEADER.splitlines()[0] if len(rows) == 1 else "", end="\n" if len(rows) == 1 else "")
        print(table_line(row), flush=True)
        if args.output_json:
            with open(args.output_json, "w") as f:
                json.dump({"rows": rows}, f, indent=1)
    print()
    print(HEADER)
    for r in rows:
        print(table_line(r))
    for line in goals(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
