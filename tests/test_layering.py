"""The dependency rules of nfx (README, "Development"), checked by parsing imports (no import needed)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "nfx"

# module (relative path prefix) → third-party roots it may import
FASTAI_OK = ("api.py", "fastai.py", "train/learner.py", "train/callbacks.py", "train/fit.py", "train/checkpoint.py",
             "train/accumulation.py", "train/distributed.py", "train/persample_cb.py",
             "train/optim.py", "train/lr_find.py",
             "data/dataloaders.py")
UI_OK = ("cli/", "console.py")
ONNX_OK = ("export/",)
PURE = ("data/intensity.py", "data/split.py", "train/agc.py", "evaluate/metrics.py", "evaluate/thresholds.py",
        "evaluate/calibration.py", "evaluate/cautions.py", "records.py", "data/resize.py",
        "evaluate/bootstrap.py", "config.py", "errors.py")
PURE_FORBIDDEN = {"fastai", "typer", "rich", "onnx", "onnxruntime", "timm", "pydicom", "albumentations"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _modules():
    return [(p.relative_to(PKG).as_posix(), _imports(p)) for p in sorted(PKG.rglob("*.py"))]


def test_layering_rules():
    problems = []
    for rel, imps in _modules():
        roots = {i.split(".")[0] for i in imps}
        if any(i == "nfx.cli" or i.startswith("nfx.cli.") for i in imps) and rel != "__main__.py" \
                and not rel.startswith("cli/"):
            problems.append(f"{rel} imports nfx.cli")
        if "fastai" in roots and not rel.startswith(FASTAI_OK):
            problems.append(f"{rel} imports fastai")
        if roots & {"typer", "rich"} and not rel.startswith(UI_OK):
            problems.append(f"{rel} imports typer/rich")
        if roots & {"onnx", "onnxruntime", "onnxscript"} and not rel.startswith(ONNX_OK):
            problems.append(f"{rel} imports onnx")
        if rel.startswith(PURE) and roots & PURE_FORBIDDEN:
            problems.append(f"{rel} (pure) imports {sorted(roots & PURE_FORBIDDEN)}")
        if rel == "train/agc.py" and roots - {"torch", "collections", "__future__", "typing"}:
            problems.append(f"train/agc.py imports {sorted(roots)}")
    assert not problems, problems


def test_the_checker_sees_violations(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("import fastai.vision.all\nfrom rich.console import Console\n")
    assert {"fastai.vision.all", "rich.console"} <= _imports(bad)


def test_cli_has_no_module_level_heavy_imports():
    top = set()
    for node in [n for p in sorted((PKG / "cli").glob("*.py")) for n in ast.parse(p.read_text()).body]:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    assert not top & {"torch", "fastai", "timm", "numpy", "pydicom", "onnx", "rich"}


def _from_imports(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    return [(n.module, [a.name for a in n.names]) for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and n.level == 0]


def test_rules_inside_nfx():
    """Only cli/api (and the workflows themselves) import the workflows; the data, train and
    evaluate layers never do; no module imports another module's _private names."""
    problems = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        for mod, names in _from_imports(path):
            if (mod.startswith("nfx.workflows") or (mod == "nfx" and "workflows" in names)) and not (
                    rel == "api.py" or rel.startswith(("cli/", "workflows/"))):
                problems.append(f"{rel} imports {mod}")
            if mod.startswith("nfx.") or mod == "nfx":
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private:
                    problems.append(f"{rel} imports private {private} from {mod}")
    assert not problems, problems


def test_the_inner_checker_sees_violations(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from nfx.workflows.finetune import finetune\nfrom nfx.data.discover import _candidate\n")
    assert ("nfx.data.discover", ["_candidate"]) in _from_imports(bad)
    assert ("nfx.workflows.finetune", ["finetune"]) in _from_imports(bad)


def test_api_only_re_exports():
    tree = ast.parse((PKG / "api.py").read_text())
    kinds = {type(n).__name__ for n in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Assign"}, kinds  # docstring, imports, __all__


def _nfx_import_graph(root: Path = PKG, package: str = "nfx") -> dict[str, set[str]]:
    """module → the nfx modules it imports, at any level (function-level imports included: a lazy
    import is still a dependency)."""
    mods = {}
    for p in root.rglob("*.py"):
        parts = (package, *p.relative_to(root).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {}
    for name, p in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods}
                deps |= {node.module} if node.module in mods and not any(
                    f"{node.module}.{a.name}" in mods for a in node.names) else set()
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
        graph[name] = deps - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    """The cohesion rule (it replaced a 330-line cap, which drew boundaries by length): no nfx modules
    import each other, directly or round a loop, lazy imports included. Two modules that need each
    other are one module split in the wrong place (the old discover <-> labels_csv); a module that
    grows large stays whole as long as what it imports only points one way."""
    assert not _cycles(_nfx_import_graph()), _cycles(_nfx_import_graph())


def test_the_cycle_checker_sees_a_lazy_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.a import y\n")
    (pkg / "c.py").write_text("from pkg import a\n")
    assert _cycles(_nfx_import_graph(pkg, "pkg")) == [["pkg.a", "pkg.b"]]


def test_no_references_to_files_outside_the_repository():
    root = PKG.parent
    hits = []
    for p in [*PKG.rglob("*.py"), *(root / "tests").glob("*.py"), *(root / "benchmarks").glob("*.py"),
              root / "README.md", *(root / "docs").glob("*.md")]:
        text = p.read_text()
        for needle in ("shared/", "../"):
            if needle in text and p.name != "test_layering.py":
                hits.append(f"{p.relative_to(root)}: {needle}")
    assert not hits, hits
