"""The README's Python tour runs as written, on real data (Frey Faces from ../shared/data)."""
import os
import re
import subprocess
import sys

from helpers import ROOT, script_env


def _python_blocks(path):
    with open(path) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_readme_python_blocks_run_as_written(tmp_path, real_data_dir, shared_data):
    blocks = _python_blocks(os.path.join(ROOT, "README.md"))
    assert blocks, "the README has no Python tour"
    env = script_env(TFVAMP_MANUAL_DIR=str(shared_data), TFDS_DATA_DIR=real_data_dir("frey_faces"),
                     PYTHONPATH=ROOT)
    for block in blocks:
        result = subprocess.run([sys.executable, "-c", block], cwd=str(tmp_path), env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, block + "\n" + result.stderr[-3000:]
        assert "Traceback" not in result.stderr
    assert "log p(x)" in result.stdout
