"""The dependency rules of shared/DESIGN.md, checked by parsing imports (no import needed)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "nfx"

# module (relative path prefix) → third-party roots it may import
FASTAI_OK = ("api.py", "train/learner.py", "train/callbacks.py", "train/fit.py", "train/checkpoint.py",
             "train/optim.py",
             "data/dataloaders.py")
UI_OK = ("cli.py", "console.py")
ONNX_OK = ("export/",)
PURE = ("data/intensity.py", "data/split.py", "train/agc.py", "evaluate/metrics.py",
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
        if "nfx.cli" in imps and rel != "__main__.py":
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
    tree = ast.parse((PKG / "cli.py").read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    assert not top & {"torch", "fastai", "timm", "numpy", "pydicom", "onnx", "rich"}
