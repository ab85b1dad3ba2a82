"""The package's layers (docs/architecture.md) hold: no module imports one above it.

Read from the source, imports inside functions included, so a lazy import
cannot hide an upward dependency; a new module must be given its layer here.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deq_petsc"

#: layer -> modules (relative to deq_petsc; a package name covers its submodules)
LAYERS = {
    1: ["allocator", "atomic", "blas_threads", "c_output", "callbacks", "convergence", "devices",
        "kernels", "diagnostics", "errors", "interop", "operators", "options_spec", "outcome",
        "petsc_options", "problem", "progress", "reference", "solver", "adjoint",
        "solver_sets", "lean"],
    2: ["layer", "integrations"],
    3: ["models"],
    4: ["data"],
    5: ["config", "objectives", "metrics", "checkpoint", "parallel", "plots", "run_record"],
    6: ["inference", "batch_predict", "baseline"],
    7: ["train", "compare", "demo", "demo_seeds"],
    8: ["cli", "app"],
}
LAYER_NAMES = {1: "PETSc core", 2: "the layer", 3: "models", 4: "data",
               5: "shared by inference and training", 6: "inference", 7: "training",
               8: "command line"}


def _layer(module: str) -> int | None:
    """The layer of ``module`` (dotted, relative to the package); None: not placed."""
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
            elif node.module and node.module.startswith("deq_petsc."):
                found.add(node.module[len("deq_petsc."):])
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
    deps = _imports("demo", PACKAGE / "demo.py")
    assert "solver_sets" in deps and "data" in deps          # top-level and lazy ones
    assert _layer("train.trainer") == 7 and _layer("data.tasks") == 4
