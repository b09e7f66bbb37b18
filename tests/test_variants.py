"""A new AGC mode, augmentation preset or metric is one registry entry (README, "Development"):
a dummy of each, registered here, reaches config validation, the CLI's choices, the training
loop and the report / console / MODEL.md."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nfx import api, variants
from nfx.config import DataConfig, ModelConfig, RunConfig, TrainConfig, validate
from nfx.console import Printer, show_evaluation
from nfx.errors import ConfigError
from nfx.evaluate import metric_table
from nfx.evaluate.report import render_markdown
from nfx.export import card

CALLS: list[str] = []


def _counting_agc(ctx):
    """A dummy AGC mode: batch AGC that records each step it clips."""
    from nfx.train.callbacks import AGCCallback

    class Counting(AGCCallback):
        def before_step(self):
            CALLS.append("step")
            super().before_step()

    return Counting(ctx.clip_factor, params=ctx.body, column=None)


@pytest.fixture
def dummies():
    import albumentations as A

    mode = variants.register_agc_mode(variants.AGCMode(
        "counting", "a dummy that counts steps", "steps", "counting (dummy)", _counting_agc,
        lambda agc, compiled: "counting needs AGC on" if not agc else None))
    preset = variants.register_aug_preset(variants.AugPreset("invert", "a dummy that inverts",
                                                             lambda flip: [A.InvertImg(p=1.0)]))
    metric_table.register(metric_table.Metric("youden_j", "Youden's J (dummy)", ci="youden_j_ci",
                                              where=metric_table.EVERYWHERE), after="balanced_accuracy")
    yield mode, preset
    variants.AGC_MODES.pop("counting")
    variants.AUG_PRESETS.pop("invert")
    metric_table.METRICS[:] = [m for m in metric_table.METRICS if m.key != "youden_j"]


def _cfg(data, out, **kw):
    return RunConfig(data=DataConfig(path=str(data), size=64, num_workers=0, aug=kw.pop("aug", "none")),
                     model=ModelConfig(arch="test_nfnet", pretrained=False),
                     train=TrainConfig(**{"epochs": 1, "freeze_epochs": 0, "bs": 4, "lr": 1e-3, "agc": 0.16, **kw}),
                     out=str(out), name="v")


def test_a_registered_agc_mode_and_preset_are_validated_and_used(dummies, tiny_data, tmp_path):
    validate(_cfg(tiny_data / "png", tmp_path, agc_mode="counting", aug="invert"))
    with pytest.raises(ConfigError, match="--agc-mode must be batch, per-sample or counting"):
        validate(_cfg(tiny_data / "png", tmp_path, agc_mode="nope"))
    with pytest.raises(ConfigError, match="--aug must be none, light, strong or invert"):
        validate(_cfg(tiny_data / "png", tmp_path, aug="nope"))
    from nfx.data import augment

    assert "InvertImg" in " ".join(augment.describe("invert", flip=False))
    CALLS.clear()
    res = api.finetune(_cfg(tiny_data / "png", tmp_path, agc_mode="counting", aug="invert"), Printer(quiet=True))
    assert len(CALLS) >= 1 and res.history  # the mode's callback ran in the training loop
    # its own cross-field rule runs before any file is read
    with pytest.raises(ConfigError, match="counting needs AGC on"):
        api.finetune(_cfg(tmp_path / "missing", tmp_path, agc_mode="counting", agc=None), Printer(quiet=True))
    text = card.render({"classes": ["a", "b"], "arch": "test_nfnet", "input_size": 64}, {"train": {"agc": 0.16}},
                       {"agc_mode": "counting"}, None, {"onnx": "m.onnx", "max_abs_diff": 0.0})
    assert "AGC 0.16 (counting (dummy))" in text


def test_a_registered_variant_is_a_cli_choice(dummies):
    """A plugin registers before the CLI is imported; --help lists it with its wording."""
    code = ("import nfx.variants as v\n"
            "v.register_agc_mode(v.AGCMode('counting', 'a dummy that counts steps', 'steps', 'c', lambda c: None))\n"
            "v.register_aug_preset(v.AugPreset('invert', 'a dummy that inverts', lambda f: []))\n"
            "from nfx.cli import app\napp(['finetune', '--help'], prog_name='nfx')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "400", "TERMINAL_WIDTH": "400"}).stdout
    flat = " ".join(out.split())
    assert "counting (a dummy that counts steps)" in flat and "invert (a dummy that inverts)" in flat


def test_a_registered_metric_reaches_report_console_and_card(dummies, capsys):
    ev = {"run": "r", "data": "d", "n_images": 4, "n_patients": 4, "accuracy": 0.75, "balanced_accuracy": 0.75,
          "roc_auc": 0.8, "roc_auc_ci": [0.6, 0.9], "youden_j": 0.5, "youden_j_ci": [0.2, 0.7],
          "sensitivity": 0.5, "specificity": 1.0, "classes": ["a", "b"], "confusion_matrix": [[2, 0], [1, 1]],
          "positive_class": "b", "threshold": 0.5, "threshold_source": "default"}
    want = "Youden's J (dummy)"
    md = render_markdown(ev)
    assert f"| {want} | 0.500 (95% CI 0.200–0.700) |" in md
    assert md.index("balanced accuracy") < md.index(want) < md.index("ROC AUC")  # where it was registered
    show_evaluation(Printer(), ev, "run")
    assert want in capsys.readouterr().err
    text = card.render({"classes": ["a", "b"], "arch": "x", "input_size": 64}, {"train": {}}, {}, ev,
                       {"onnx": "m.onnx", "max_abs_diff": 0.0})
    assert f"| {want} | 0.500 (95% CI 0.200–0.700) |" in text
    # sensitivity reads the same everywhere: a proportion with three decimals
    assert "| sensitivity (b, threshold 0.5) | 0.500 |" in md and "| sensitivity (b, threshold 0.5) | 0.500 |" in text


def test_the_readme_example_registers_working_variants(tiny_data, tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Adding an AGC mode"):]
    (code,) = re.findall(r"```python\n(.*?)```", section[:section.index("\n## ") if "\n## " in section else None],
                         re.S)
    try:
        exec(compile(code, "README.md", "exec"), {})
        assert {"loose", "grid"} <= set(variants.AGC_MODES) | set(variants.AUG_PRESETS)
        res = api.finetune(_cfg(tiny_data / "png", tmp_path, agc_mode="loose", aug="grid"), Printer(quiet=True))
        assert res.metrics["agc_calls"] > 0  # the registered mode's callback clipped in the loop
        md = render_markdown({"data": "d", "n_images": 1, "n_patients": 1, "accuracy": 1.0, "youden_j": 0.25,
                              "classes": ["a", "b"], "confusion_matrix": [[1, 0], [0, 0]], "positive_class": "b",
                              "threshold": 0.5})
        assert "| Youden's J | 0.250 |" in md
    finally:
        variants.AGC_MODES.pop("loose", None)
        variants.AUG_PRESETS.pop("grid", None)
        metric_table.METRICS[:] = [m for m in metric_table.METRICS if m.key != "youden_j"]


def test_the_per_sample_callback_implements_exactly_the_registered_implementations():
    """The callback dispatches on its own names; the registry describes them for the CLI and config."""
    from nfx.train.persample_cb import IMPLEMENTED

    assert set(IMPLEMENTED) == set(variants.PERSAMPLE_IMPLS)
