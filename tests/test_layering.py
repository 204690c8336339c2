"""The package layering (issue 21, issue 27): each package imports only packages of lower layers (LAYERS), no two
modules import each other (no cycle in the module import graph, imports inside functions and TYPE_CHECKING blocks
included), and no module imports another module's private (underscore) name. Static: the source is read with ast,
nothing is imported. Also the one model seam: only the executor reaches the model's embedding and rotary modules."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "drllm"
# the packages by layer, lowest first: a package imports packages of lower layers only, never one of its own layer
# or above (the stages' packages in the order the pipeline runs them; docs/library.md)
LAYERS = (("core",), ("data", "formats"), ("search",), ("routing",), ("training", "calibration"),
          ("release", "evaluation"), ("serving",))
LAYER = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}


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


def layering_violations(root: Path = SRC) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        pkg = rel[0] if len(rel) > 1 else ""
        name = _module_name(path, root)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        where = path.relative_to(root.parent)
        if pkg and pkg not in LAYER and path.name == "__init__.py" and len(rel) == 2:
            found.append(f"{where}: package {pkg} is in no layer (LAYERS)")
        for line, module, names in _imports(path, package):
            if not (module == "drllm" or module.startswith("drllm.")):
                continue
            other = module.split(".")[1] if module != "drllm" else ""
            if pkg and other and other != pkg and LAYER.get(other, len(LAYERS)) >= LAYER.get(pkg, -1):
                found.append(f"{where}:{line}: {pkg} imports {module}")
            if module != name:
                found += [f"{where}:{line}: private {n} from {module}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
    return found


def test_layering():
    assert len(list(SRC.rglob("*.py"))) > 20        # the walk sees the package
    assert {path.parent.name for path in SRC.glob("*/__init__.py")} == set(LAYER)
    found = layering_violations()
    assert not found, "layering violations:\n" + "\n".join(found)


def import_graph(root: Path = SRC) -> dict[str, dict[str, str]]:
    """module -> {module it imports: where (file:line)}, over the modules under `root`: every import statement,
    at top level, in a function or under TYPE_CHECKING. `from X import Y` counts as importing X.Y when that is a
    module, else X; a package's __init__ is the package's module. A package's own __init__ running before its
    submodules (Python's doing, not an import statement) is no edge."""
    modules = {_module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges = graph.setdefault(name, {})
        for line, module, names in _imports(path, package):
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            targets = submodules + ([module] if len(submodules) < len(names) or not names else [])
            for target in targets:
                if target in modules and target != name:
                    edges.setdefault(target, f"{path.relative_to(root.parent)}:{line}")
    return graph


def import_cycles(root: Path = SRC) -> list[list[str]]:
    """The cycles of the import graph: each set of modules that reach one another (sorted), largest first."""
    graph = import_graph(root)
    reach = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for target in graph[todo.pop()]:
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        reach[start] = seen
    cycles = {tuple(sorted(m for m in reach[start] if start in reach[m])) for start in graph if start in reach[start]}
    return sorted((list(c) for c in cycles), key=lambda c: (-len(c), c))


def test_no_import_cycles():
    """No two modules import each other, directly or round a longer cycle (issue 27): each stage's package sits
    on the ones below it, and a type-only import is no excuse (a protocol or a module of its own breaks it)."""
    graph = import_graph()
    assert len(graph) > 40 and "drllm.routing.router" in graph["drllm.routing.inference"]
    cycles = import_cycles()
    detail = ["\n".join(f"  {a} -> {b} ({graph[a][b]})" for a in cycle for b in cycle if b in graph[a])
              for cycle in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(detail)


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
    ("routing", "from drllm.training.samples import TrainingSample\n", "routing imports drllm.training.samples"),
    ("training", "def f():\n    from drllm.calibration import certify\n", "training imports drllm.calibration"),
    ("release", "from drllm.serving.points import x\n", "release imports drllm.serving.points"),
    ("newpkg", "import os\n", "package newpkg is in no layer"),
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


def _tree(tmp_path, files: dict[str, str]) -> Path:
    root = tmp_path / "drllm"
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


def test_cycle_checker_catches(tmp_path):
    """Each way two modules end up importing each other is reported: in a function, under TYPE_CHECKING, round
    three modules by relative imports, and a package that imports a submodule which imports the package."""
    root = _tree(tmp_path, {
        "__init__.py": "",
        "a/__init__.py": "",
        "a/one.py": "def f():\n    from drllm.a.two import g\n",
        "a/two.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from drllm.a import one\n",
        "b/__init__.py": "",
        "b/x.py": "from . import y\n",
        "b/y.py": "from .z import w\n",
        "b/z.py": "import drllm.b.x\n",
        "c/__init__.py": "from drllm.c import reg\nTABLE = {}\n",
        "c/reg.py": "from drllm.c import TABLE\n",
        # d is how routing.kinds breaks that: the table in a module of its own, which the package and the entry import
        "d/__init__.py": "from drllm.d.base import TABLE\nfrom drllm.d import impl\n",
        "d/base.py": "TABLE = {}\n",
        "d/impl.py": "from drllm.d.base import TABLE\nimport drllm.a.one\n",
    })
    assert import_cycles(root) == [["drllm.b.x", "drllm.b.y", "drllm.b.z"], ["drllm.a.one", "drllm.a.two"],
                                   ["drllm.c", "drllm.c.reg"]]


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
