"""The package's shape: layers that import only downwards, no import circle, a light ``import cpvt``.

The import graph is read from the source (every ``import`` and ``from ... import``, including the ones inside
functions), so a lazy import cannot hide a circle or an upward arrow.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cpvt"

# Layers, lowest first. A module may import its own layer or lower ones; the two top wings not each other.
LAYERS = {
    "utils": 0,  # errors and exit codes, atomic files, tables, plots, the version: no cpvt imports
    "tokens": 1, "layers": 1, "pos": 1, "models": 1, "data": 1, "checkpoint": 1,  # the core
    "train": 2,  # config, engine, augment, evaluate, ...
    "deploy": 3, "study": 3,  # siblings: neither imports the other
    "cli": 4, "__main__": 4,
    "__init__": 5,  # the public API: nothing inside the package imports it
}


def module_name(path: Path, root: Path = SRC) -> str:
    parts = ["cpvt", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = SRC) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The cpvt modules ``name`` imports (a name imported from a package counts as its submodule when one exists)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "cpvt"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "cpvt":
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & known
            found |= subs if subs and len(subs) == len(node.names) else {target} | subs
    return {m for m in found if m in known and m != name}


def layer_of(name: str) -> tuple[int, str]:
    top = name.split(".")[1] if "." in name else "__init__"
    return LAYERS[top], top


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_the_package_root_holds_only_the_public_api_the_core_and_the_wings():
    entries = {p.stem if p.suffix == ".py" else p.name for p in SRC.iterdir()
               if p.name != "__pycache__" and (p.suffix == ".py" or p.is_dir())}
    assert entries == set(LAYERS), f"unexpected at the package root: {entries ^ set(LAYERS)}"


def test_every_import_points_down_or_sideways_within_its_layer(graph):
    upward = []
    for src, targets in graph.items():
        (rank, wing) = layer_of(src)
        for dst in targets:
            (their_rank, their_wing) = layer_of(dst)
            if their_rank > rank or (their_rank == rank and rank == 3 and their_wing != wing):
                upward.append(f"{src} -> {dst}")
    assert not upward, "imports that climb a layer (or cross between sibling wings):\n" + "\n".join(upward)


def test_there_is_no_import_circle(graph):
    # Tarjan's strongly connected components: any component of 2+ modules (or a self-loop) is a circle
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_graph_reader_sees_lazy_imports_and_would_report_a_circle(tmp_path):
    """The reader itself: an import inside a function counts, and a two-module circle is found."""
    pkg = tmp_path / "cpvt"
    (pkg / "models").mkdir(parents=True)
    (pkg / "checkpoint.py").write_text("def f():\n    from .models import create_model\n")
    (pkg / "models" / "__init__.py").write_text("from ..checkpoint import f\n")
    known = set(modules(pkg))
    g = {name: imports_of(name, path, known) for name, path in modules(pkg).items()}
    assert g == {"cpvt.checkpoint": {"cpvt.models"}, "cpvt.models": {"cpvt.checkpoint"}}
    with pytest.raises(AssertionError, match="import circles"):
        test_there_is_no_import_circle(g)


def test_import_cpvt_stays_light():
    code = ("import sys, cpvt; cpvt.create_model('cpvt_micro'); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'kornia', 'PIL', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"import cpvt loaded {out}"
    # and the public API's wing function still arrives when asked for
    code = "import cpvt; from cpvt import load_run; print(load_run.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "cpvt.deploy.predict"
