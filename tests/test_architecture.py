"""The house as the README draws it, read from the imports of every module (no module is run).

Arrows: experiments -> tasks -> training, objectives -> models; graphs -> data -> chem. Models never
read files or import the data side; training never imports chemistry, data, graphs, models or
objectives; no job module of tasks/ imports another; nothing in the library imports experiments/;
no import circle among the library's modules.
"""

import ast
import graphlib
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "georecon_jax"

# What each room of the library may import from the library (besides itself).
ALLOWED = {
    "chem": set(),
    "data": {"chem"},
    "graphs": {"data", "chem"},
    "models": set(),
    "objectives": {"models"},
    "training": set(),
    "tasks": {"training", "objectives", "models", "graphs", "data", "chem", "plots"},
    "plots": set(),
    # The studies: cells (commands of the entry points), their statistics, reports and figures.
    # They read what the jobs write with the jobs' own readers and metrics (tasks.finetune_pairs'
    # split_finished, tasks.metrics' roc_auc) rather than repeat them, and keep a pretraining's
    # weights in its record through training's checkpoint and transfer readers.
    "studies": {"plots", "tasks", "training"},
    # Models in other programs' terms: the ASE calculator (on top of tasks.inference) and torchmd-net
    # checkpoints imported as workdirs (interop/torchmd*.py: they build this library's models and
    # configs, check the parameters against them, and save checkpoints, target statistics and noise
    # statistics as the jobs do), so a room above tasks that may import what tasks imports.
    "interop": {"tasks", "data", "graphs", "models", "objectives", "training"},
}
# Modules of tasks/ that each run one kind of job: none may import another.
JOBS = {"pretrain", "finetune", "mrl3d", "finetune_pairs"}


def imports_of(path: Path):
    """Every absolute module name imported by a file, at any depth (functions included)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            for alias in node.names:  # from georecon_jax import plots
                yield f"{node.module}.{alias.name}"


def imported_modules(path: Path):
    """Every absolute name a file imports as a module or from a module, at any depth (imports inside
    functions included): ``import a.b`` -> a.b; ``from a import b`` -> a.b (a module, or a name
    defined in a; `import_graph` resolves it)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE):
    """{module: the package's modules it imports}, read from every file's AST.

    An imported name points at the longest module it starts with (``from a.b import f`` -> a.b).
    The parent packages Python runs first are not edges: a package's ``__init__`` may import its
    own modules (objectives/ imports each of its files, found with pkgutil, so no edge either)."""
    files = [p for p in package.rglob("*.py") if "__pycache__" not in p.parts]
    modules = {module_name(p, package): p for p in files}

    def resolve(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    return {
        name: {resolve(n) for n in imported_modules(path)} - {None, name} for name, path in modules.items()
    }


def import_circle(graph):
    """One circle of the graph as [m1, m2, ..., m1], or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        return e.args[1]
    return None


def room(module: str):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "georecon_jax" else None


def library_files():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_room_of_the_library_is_known():
    rooms = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in library_files()} - {"__init__"}
    assert rooms <= set(ALLOWED), f"rooms the arrows do not cover: {rooms - set(ALLOWED)}"
    assert not (PACKAGE / "workflows").exists(), "workflows/ is gone: jobs are tasks on training.runner"


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_arrows(path):
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    for module in imports_of(path):
        assert not module.startswith("experiments"), (
            f"{path.name} imports {module}: the library never imports experiments/"
        )
        target = room(module)
        if target is None or target == own or own == "__init__":
            continue
        assert target in ALLOWED[own], (
            f"{own}/{path.name} imports {module}: {own} may import only {sorted(ALLOWED[own])}"
        )


def test_no_job_imports_another():
    for name in JOBS:
        path = PACKAGE / "tasks" / f"{name}.py"
        assert path.exists(), path
        for module in imports_of(path):
            if module.startswith("georecon_jax.tasks."):
                other = module.split(".")[2]
                assert other not in JOBS, f"tasks/{name}.py imports the job tasks/{other}.py"


def test_entry_points_do_not_import_each_other():
    """Entry points (modules run with python -m) may import the helper modules beside them
    (cli.py, configs/: no __main__), never another entry point."""
    entries = {
        p.stem for p in (ROOT / "experiments").glob("*.py") if 'if __name__ == "__main__"' in p.read_text()
    }
    assert {"pretrain", "finetune", "study", "finetune_pairs"} <= entries
    for name in entries:
        for module in imports_of(ROOT / "experiments" / f"{name}.py"):
            parts = module.split(".")
            assert not (parts[0] == "experiments" and len(parts) > 1 and parts[1] in entries), (
                f"experiments/{name}.py imports experiments/{parts[1]}.py"
            )


def test_no_import_circle():
    """No module of the library imports itself through others, not even inside a function."""
    graph = import_graph()
    assert "georecon_jax.objectives.coord" in graph["georecon_jax.objectives.coord_ladder"]  # edges exist
    circle = import_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_objective_registry_imports_no_objective():
    """Built-in objectives register themselves (the package imports each file): the registry knows
    none of them, so adding one edits nothing else."""
    objectives = {m for m in import_graph() if m.startswith("georecon_jax.objectives.")}
    assert import_graph()["georecon_jax.objectives.registry"] & objectives <= {
        "georecon_jax.objectives.noise"
    }


def test_the_circle_checker_sees_a_circle(tmp_path):
    """A circle closed by an import inside a function is one (the registry's old lazy import)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "registry.py").write_text("def load():\n    from pkg import coord\n")
    (pkg / "coord.py").write_text("from pkg.registry import load\n")
    assert import_graph(pkg) == {"pkg": set(), "pkg.registry": {"pkg.coord"}, "pkg.coord": {"pkg.registry"}}
    assert set(import_circle(import_graph(pkg))) == {"pkg.coord", "pkg.registry"}
    (pkg / "registry.py").write_text("")
    assert import_circle(import_graph(pkg)) is None


def test_the_checker_sees_a_wrong_arrow(tmp_path):
    """The test above can fail: a model importing the data side is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from georecon_jax.data.qm9 import load_qm9\n")
    assert room(next(iter(imports_of(bad)))) == "data" and "data" not in ALLOWED["models"]


def test_code_is_formatted():
    """`ruff format` (configured in ruff.toml) leaves every file as it is."""
    import shutil
    import subprocess

    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (requirements.txt pins it)")
    out = subprocess.run([ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, "run `ruff format .`:\n" + out.stdout[-2000:]
