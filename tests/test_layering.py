"""The package layering (issue 21): no package below evaluation imports it, core imports no other drllm
package, and no module imports another module's private (underscore) name. Static: the source is read with ast,
nothing is imported. Also the one model seam: only the executor reaches the model's embedding and rotary modules."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "drllm"
BELOW_EVALUATION = ("routing", "formats", "core", "search", "data")
ABOVE_CORE = ("formats", "search", "routing", "evaluation", "data")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, package: list[str]):
    """(line, imported module, imported names) for every import in a file; relative imports resolved against
    `package`, the file's package as a list of names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):        # walk, not body: imports inside functions count too
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            yield node.lineno, module, [alias.name for alias in node.names]


def _under(module: str, package: str) -> bool:
    return module == f"drllm.{package}" or module.startswith(f"drllm.{package}.")


def layering_violations(root: Path = SRC) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        pkg = rel[0] if len(rel) > 1 else ""
        name = _module_name(path, root)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        where = path.relative_to(root.parent)
        for line, module, names in _imports(path, package):
            if not (module == "drllm" or module.startswith("drllm.")):
                continue
            if pkg in BELOW_EVALUATION and _under(module, "evaluation"):
                found.append(f"{where}:{line}: {pkg} imports {module}")
            if pkg == "core" and any(_under(module, p) for p in ABOVE_CORE):
                found.append(f"{where}:{line}: core imports {module}")
            if module != name:
                found += [f"{where}:{line}: private {n} from {module}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
    return found


def test_layering():
    assert len(list(SRC.rglob("*.py"))) > 20        # the walk sees the package
    found = layering_violations()
    assert not found, "layering violations:\n" + "\n".join(found)


def test_scripts_use_public_names():
    """The CLIs and benchmarks (workflow/scripts, bench) call the library through its public names too."""
    repo = SRC.parents[1]
    found = [f"{path.relative_to(repo)}:{line}: private {n} from {module}"
             for folder in ("workflow/scripts", "bench") for path in sorted((repo / folder).rglob("*.py"))
             for line, module, names in _imports(path, []) if module.startswith("drllm")
             for n in names if n.startswith("_") and not n.startswith("__")]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("pkg, source, expected", [
    ("routing", "from drllm.evaluation.cells import EvalEntry\n", "routing imports drllm.evaluation.cells"),
    ("core", "def f():\n    from drllm.formats import grading\n", "core imports drllm.formats"),
    ("core", "import drllm.data.examples\n", "core imports drllm.data.examples"),
    ("search", "from drllm.core.paths import (\n    LayerPath, _private)\n", "private _private"),
    ("formats", "from ..evaluation import metrics\n", "formats imports drllm.evaluation"),
])
def test_checker_catches(tmp_path, pkg, source, expected):
    """The checker itself: each kind of violation, written into a throwaway tree, is reported."""
    root = tmp_path / "drllm"
    (root / pkg).mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / pkg / "__init__.py").write_text("")
    (root / pkg / "bad.py").write_text(source)
    found = layering_violations(root)
    assert any(expected in f for f in found), found


def test_checker_allows_own_private_names(tmp_path):
    root = tmp_path / "drllm"
    (root / "core").mkdir(parents=True)
    (root / "core" / "a.py").write_text("from drllm.core.a import _x\nfrom . import b\nfrom drllm.core.b import __all__\n")
    assert layering_violations(root) == []


# the model's own embedding and the resume hook: only executor.py may reach them, through `embed`/`resume_hidden`
# everywhere else, so an architecture quirk (an embedding multiplier, say) is handled in one place
MODEL_PROBES = ("embed_tokens", "rotary_emb", "_resume_hidden")
SEAM_OWNER = SRC / "core" / "executor.py"


def seam_violations(paths) -> list[str]:
    found = []
    for path in paths:
        if path == SEAM_OWNER:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found += [f"{path}:{node.lineno}: .{node.attr}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and node.attr in MODEL_PROBES]
    return found


def test_one_model_seam():
    """Only the executor touches the decoder's embedding and rotary modules (issue 21): the library, the scripts,
    the benchmarks and the tests embed and resume through its public methods."""
    repo = SRC.parents[1]
    paths = [path for folder in ("src", "workflow", "bench", "tools", "tests")
             for path in sorted((repo / folder).rglob("*.py"))]
    assert SEAM_OWNER in paths and len(paths) > 40
    found = seam_violations(paths)
    assert not found, "model probes outside the executor:\n" + "\n".join(found)


def test_seam_checker_catches(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("h = executor.decoder.embed_tokens(ids)\nx = executor._resume_hidden(s, 2, p, ids, None)\n")
    assert [line.split(": ")[1] for line in seam_violations([bad])] == [".embed_tokens", "._resume_hidden"]
