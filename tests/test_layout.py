"""The package's shape: no module reaches into another's private names, no TensorFlow / TFP /
TFDS internals, short functions. Read from the source with `ast`."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "tfvamp").rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
INTERNAL_MODULES = ("tensorflow.python", "tensorflow.tsl", "tensorflow.core", "tensorflow_probability.python",
                    "tensorflow_datasets.core", "keras.src", "tf_keras")
MAX_FUNCTION_LINES = 70


def _tree(path):
    return ast.parse(path.read_text(), filename=str(path))


def _private_accesses(tree):
    """`x._name` where x is not `self`, `cls` or `super()`: another object's private name."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
            continue
        found.append(f"line {node.lineno}: .{node.attr}")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_names_of_other_objects(path):
    assert _private_accesses(_tree(path)) == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_internal_imports(path):
    imported = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.append(node.module)
    assert [m for m in imported if m.startswith(INTERNAL_MODULES)] == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_are_short(path):
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(_tree(path))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_the_checker_sees_a_private_access():
    tree = ast.parse("def f(model, self):\n    model._encode(1)\n    self._ok()\n    super()._fine()\n")
    assert _private_accesses(tree) == ["line 2: ._encode"]
