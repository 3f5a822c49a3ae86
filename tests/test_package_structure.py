"""The package's shape: data flows one way through the sorter's modules, and the study tools stay apart."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "spikeinterface_esort"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports when it runs (anywhere in it, functions included; not the imports
    under ``if TYPE_CHECKING:``, which only type checkers read)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                 for statement in block.body for node in ast.walk(statement)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {t for t in [target] + [f"{target}.{a.name}" for a in node.names] if t in modules}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
    return found - {name, "spikeinterface_esort"}  # the package itself: __init__ only registers the sorter


def _import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _runtime_imports(path, set(paths)) for name, path in paths.items()}


def test_no_module_imports_a_module_that_imports_it_back():
    graph = _import_graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                todo.append(nxt)
        return False

    circles = sorted(name for name in graph if reaches(name, name))
    assert circles == [], f"modules on an import circle: {circles}"


def test_the_sorter_never_imports_the_study_tools():
    graph = _import_graph()
    sorter_modules = [name for name in graph if ".tools" not in name and not name.endswith("__main__")]
    assert "spikeinterface_esort.pipeline" in sorter_modules and "spikeinterface_esort.tools.benchmark" in graph
    offenders = {name: sorted(d for d in graph[name] if ".tools" in d) for name in sorter_modules}
    assert {name: deps for name, deps in offenders.items() if deps} == {}


def test_the_steps_never_import_the_model_or_the_pipeline_that_call_them():
    """recording -> preprocessing -> annotation -> training -> inference -> post-processing -> sorting: each step is
    a module the model (``fit_model``, ``ESortModel.sort``) and ``pipeline.run_esort`` call, and none calls back."""
    graph = _import_graph()
    callers = {"spikeinterface_esort.model", "spikeinterface_esort.pipeline", "spikeinterface_esort.sorter"}
    steps = ["parameters", "device", "network", "preprocessing", "ensemble", "annotation", "annotation_curation", "training", "transfer", "validation",
             "inference", "postprocessing", "output", "jobs", "self_training"]
    for step in steps:
        assert not graph[f"spikeinterface_esort.{step}"] & callers, (step, graph[f"spikeinterface_esort.{step}"])
    assert "spikeinterface_esort.model" in graph["spikeinterface_esort.pipeline"]
    assert "spikeinterface_esort.pipeline" not in graph["spikeinterface_esort.model"]
