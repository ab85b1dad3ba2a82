"""The package's layers (docs/architecture.md) hold: no module imports one above it.

Read from the source, imports inside functions included, so a lazy import
cannot hide an upward dependency; a module's folder gives its layer (inside science/, a
new module must be placed here).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deq_petsc"

#: layer -> folders and modules (dotted, relative to deq_petsc; a package covers its
#: submodules). The folders are the layers' order: process < core < layer < science <
#: studies < cli; inside science, models < data < shared < inference < training.
LAYERS = {
    0: ["process"],
    1: ["core"],
    2: ["layer"],
    3: ["science.models"],
    4: ["science.data"],
    5: ["science.config", "science.objectives", "science.metrics", "science.checkpoint",
        "science.parallel", "science.plots", "science.run_record"],
    6: ["science.inference", "science.batch_predict", "science.baseline", "science.shipped"],
    7: ["science.train"],
    8: ["studies"],
    9: ["cli"],
}
LAYER_NAMES = {0: "process set-up", 1: "PETSc core", 2: "the layer", 3: "models", 4: "data",
               5: "shared by inference and training", 6: "inference", 7: "training",
               8: "studies", 9: "command line"}
#: a folder whose own __init__ spans several layers: placed at its lowest (it imports nothing)
FOLDER_INITS = {"science": 3}
#: what may sit at the top of deq_petsc/: the folders above and the package's __init__
TOP_LEVEL = {"__init__.py", "process", "core", "layer", "science", "studies", "cli"}


def _exported() -> dict[str, str]:
    """The public names of ``deq_petsc`` and the modules they come from (its _EXPORTS)."""
    init = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in ast.walk(init):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_EXPORTS":
            table = ast.literal_eval(node.value)
            return {name: module[len("deq_petsc."):] for name, module in table.items()}
    return {}


_EXPORTED = _exported()


def _layer(module: str) -> int | None:
    """The layer of ``module`` (dotted, relative to the package); None: not placed."""
    if module in FOLDER_INITS:
        return FOLDER_INITS[module]
    for level, names in LAYERS.items():
        for name in names:
            if module == name or module.startswith(name + "."):
                return level
    return None


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:                                   # the package root is everyone's parent
            yield ".".join(parts), path


def _imports(module: str, path: Path) -> set[str]:
    """The package's modules that ``module`` imports, relative to the package."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                if node.module:
                    found.add(".".join(base + [node.module]))
                else:
                    found.update(".".join(base + [a.name]) for a in node.names)
            elif node.module == "deq_petsc":     # a folder, or a public name: its module
                found.update(_EXPORTED.get(a.name, a.name) for a in node.names
                             if a.name not in ("__version__", "init"))
            elif node.module and node.module.startswith("deq_petsc."):
                base = node.module[len("deq_petsc."):]
                found.add(base)             # and its names, which may be modules
                found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name[len("deq_petsc."):] for a in node.names
                         if a.name.startswith("deq_petsc."))
    return {m for m in found if m}


def test_every_module_has_a_layer():
    unplaced = [m for m, _ in _modules() if _layer(m) is None]
    assert not unplaced, f"give these modules a layer in tests/test_layers.py: {unplaced}"


def test_no_module_imports_a_layer_above_it():
    upward = []
    for module, path in _modules():
        mine = _layer(module)
        for dep in sorted(_imports(module, path)):
            theirs = _layer(dep)
            if theirs is not None and theirs > mine:
                upward.append(f"{module} ({LAYER_NAMES[mine]}) imports {dep} "
                              f"({LAYER_NAMES[theirs]})")
    assert not upward, "\n".join(upward)


def test_the_check_sees_lazy_and_relative_imports():
    """The reader itself: a function-level relative import is found and placed."""
    deps = _imports("studies.demo", PACKAGE / "studies" / "demo.py")
    assert "core.solver_sets" in deps and "science.data" in deps   # top-level and lazy ones
    assert _layer("science.train.trainer") == 7 and _layer("science.data.tasks") == 4
    assert _layer("studies.demo") == 8 > _layer("science.train")      # studies above training
    assert _EXPORTED["DEQ"] == "layer.deq"       # from deq_petsc import DEQ: the layer


def test_a_folder_spanning_layers_imports_nothing_itself():
    for folder in FOLDER_INITS:
        assert not _imports(folder, PACKAGE / folder / "__init__.py")


def test_the_top_of_the_package_is_its_layers():
    """The layers are folders: a module at the top of deq_petsc/ would be one without."""
    # a folder with no module left (a checkout's __pycache__ of moved modules) is no entry
    top = {p.name for p in PACKAGE.iterdir()
           if p.name != "__pycache__" and (p.is_file() or any(p.rglob("*.py")))}
    assert top == TOP_LEVEL, f"at the top of deq_petsc/ only the layers' folders: {top - TOP_LEVEL}"
    assert len(top) <= 8
