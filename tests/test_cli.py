"""The console scripts of setup.py are installed and start: each `tfvamp-*` program answers
--help with its own flags (a wrong module or function name in setup.py fails here), and
scripts/*.py are thin wrappers over the same tfvamp.cli modules, with no sys.path edits."""
import ast
import importlib.metadata
import os
import pathlib
import subprocess
import sys

from helpers import ROOT, script_env

# Program -> a flag its --help must list.
PROGRAMS = {"tfvamp-train": "--dataset", "tfvamp-evaluate": "--model_dir", "tfvamp-export": "--export_dir",
            "tfvamp-sample": "--saved_model", "tfvamp-benchmark": "--quick", "tfvamp-prepare-data": "--manual_dir",
            "tfvamp-compare-runs": "--split", "tfvamp-report": "--paper_budget"}


def test_console_scripts_are_installed_and_show_help():
    installed = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")
                 if e.value.startswith("tfvamp.")}
    assert set(PROGRAMS) <= set(installed), sorted(set(PROGRAMS) - set(installed))
    bin_dir = os.path.dirname(sys.executable)
    procs = {name: subprocess.Popen([os.path.join(bin_dir, name), "--help"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=script_env(), cwd=ROOT)
             for name in PROGRAMS}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, 1), (name, err[-2000:])  # absl's --help exits with 1
        assert "Traceback" not in err, (name, err[-2000:])
        assert f"  {PROGRAMS[name]}" in out or f"  --[no]{PROGRAMS[name][2:]}" in out, (name, out[-2000:])


def test_scripts_are_thin_wrappers_without_sys_path_edits():
    for path in sorted(pathlib.Path(ROOT, "scripts").glob("*.py")):
        source = path.read_text()
        assert "sys.path" not in source, path.name
        functions = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)]
        assert len(functions) <= 1, path.name  # at most a loader (sample.py)
