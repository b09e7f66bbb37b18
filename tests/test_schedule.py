"""The schedule follows the starting point: fine-tuning a pretrained body (head warm-up,
discriminative lr) vs training from scratch (no frozen phase, one lr); explicit options win and
every resolved value is recorded in config.json."""

from __future__ import annotations

import json

import pytest

from nfx import api
from nfx.config import (
    SCHEDULE_DEFAULTS,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    resolve_schedule,
)
from nfx.console import Printer
from nfx.errors import ConfigError


def test_from_scratch_has_no_frozen_phase_and_one_lr():
    t, line = resolve_schedule(TrainConfig(epochs=6), from_scratch=True)
    assert (t.schedule, t.freeze_epochs, t.lr, t.body_lr_div) == ("from-scratch", 0, 2e-3, 1.0)
    assert line.startswith("schedule: from-scratch (the body starts from random init)")
    assert "one lr for all layers" in line


def test_pretrained_keeps_the_head_warm_up_then_one_lr():
    # measured on real MRI from local weights (docs/LEARNING.md): lr/10 on the body under-trains it
    t, line = resolve_schedule(TrainConfig(epochs=6), from_scratch=False)
    assert (t.schedule, t.freeze_epochs, t.lr, t.body_lr_div) == ("fine-tune", 1, 4e-3, 1.0)
    assert "(the body is pretrained)" in line
    assert "head-only warm-up at lr 0.004, then lr 0.002 for all layers" in line
    t, line = resolve_schedule(TrainConfig(epochs=6, body_lr_div=10.0), from_scratch=False)
    assert "then lr 0.002 for the head, body lr/10" in line


def test_explicit_values_win_over_the_schedule():
    t, line = resolve_schedule(TrainConfig(freeze_epochs=2, lr=5e-4), from_scratch=True)
    assert (t.freeze_epochs, t.lr, t.body_lr_div) == (2, 5e-4, 1.0)
    assert "given explicitly: freeze_epochs, lr" in line
    t, line = resolve_schedule(TrainConfig(schedule="fine-tune"), from_scratch=True)
    assert (t.freeze_epochs, t.lr) == (1, 4e-3) and "(given)" in line
    t, _ = resolve_schedule(TrainConfig(body_lr_div=4.0), from_scratch=False)
    assert t.body_lr_div == 4.0 and t.freeze_epochs == SCHEDULE_DEFAULTS["fine-tune"]["freeze_epochs"]


def test_resolution_is_idempotent_and_validated():
    t, _ = resolve_schedule(TrainConfig(), from_scratch=True)
    assert resolve_schedule(t, from_scratch=False)[0] == t  # a saved config replays as it was
    with pytest.raises(ConfigError, match="nothing to train"):
        resolve_schedule(TrainConfig(epochs=0), from_scratch=True)  # scratch has no warm-up epoch
    for bad in (dict(lr=float("nan")), dict(lr=float("inf")), dict(lr=-1.0), dict(schedule="warm"),
                dict(body_lr_div=0.5)):
        with pytest.raises(ConfigError):
            RunConfig.from_dict({"train": bad})


def test_finetune_records_the_resolved_schedule_and_trains_all_layers_from_scratch(tiny_data, tmp_path):
    cfg = RunConfig(data=DataConfig(path=str(tiny_data / "png"), size=64, num_workers=0),
                    model=ModelConfig(arch="test_nfnet", pretrained=False),
                    train=TrainConfig(epochs=1, bs=4, agc=0.16), out=str(tmp_path), name="scratch")
    p = Printer(quiet=True)
    res = api.finetune(cfg, p)
    saved = json.loads((res.run_dir / "config.json").read_text())["train"]
    assert (saved["schedule"], saved["freeze_epochs"], saved["lr"], saved["body_lr_div"]) == (
        "from-scratch", 0, 2e-3, 1.0)
    assert [h["phase"] for h in res.history] == ["unfrozen"]  # no frozen epoch
    assert res.history[0]["lr"] is not None
    # the saved config reproduces the same resolved schedule
    again = RunConfig.load(res.run_dir / "config.json")
    assert again.train == resolve_schedule(again.train, from_scratch=True)[0]


def test_rules_fail_before_any_work(tmp_path):
    """Bad option combinations are refused by the config, before a run folder or a decoded image."""
    from nfx.config import check_training

    missing = str(tmp_path / "no-such-folder")  # would be a DataError if discovery ran first
    for train, msg in ((dict(agc_mode="per-sample"), "needs AGC on"),
                       (dict(agc_mode="per-sample", agc=0.1, compile=True), "--compile")):
        cfg = RunConfig(data=DataConfig(path=missing), train=TrainConfig(**train), out=str(tmp_path))
        with pytest.raises(ConfigError, match=msg):
            check_training(cfg)
        with pytest.raises(ConfigError, match=msg):
            api.finetune(cfg, Printer(quiet=True))
    assert not any(tmp_path.iterdir())  # no run folder was made
    with pytest.raises(ConfigError, match="--monitor 'auc'.*valid_roc_auc"):
        RunConfig.from_dict({"train": {"monitor": "auc"}})
    with pytest.raises(ConfigError, match="--workers must be >= 0"):
        RunConfig.from_dict({"data": {"num_workers": -1}})
