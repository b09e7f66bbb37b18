"""The `nfx` command as a user runs it (subprocesses of the real entry point)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def nfx(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "nfx", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_help_imports_nothing_heavy():
    code = ("import sys, nfx.cli; heavy = [m for m in ('torch', 'fastai', 'timm', 'pydicom', 'numpy', 'onnx') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    r = nfx("--help")
    assert r.returncode == 0 and "finetune" in r.stdout and "evaluate" in r.stdout


def _assert_one_line_error(r, *needles):
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr  # one line, and the last
    for n in needles:
        assert n in errors[0], errors[0]


def test_missing_folder(tmp_path):
    _assert_one_line_error(nfx("finetune", tmp_path / "nope"), "not found", "sub-folder per label")


def test_empty_folder(tmp_path):
    _assert_one_line_error(nfx("finetune", tmp_path), "no image files", "sub-folder per label")


def test_single_class(tmp_path, tiny_data):
    one = tmp_path / "one" / "normal"
    one.mkdir(parents=True)
    src = next((tiny_data / "png" / "normal").glob("*.png"))
    (one / src.name).write_bytes(src.read_bytes())
    _assert_one_line_error(nfx("finetune", tmp_path / "one"), "only one class", "at least two")


def test_bad_option_value(tiny_data):
    _assert_one_line_error(nfx("finetune", tiny_data / "png", "--agc", "lots"), "--agc")


def test_debug_shows_traceback(tmp_path):
    r = nfx("--debug", "finetune", tmp_path / "nope")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_unknown_architecture(tiny_data, tmp_path):
    r = nfx("finetune", tiny_data / "png", "--arch", "dm_nfnet_f9", "--out", tmp_path)
    _assert_one_line_error(r, "unknown architecture", "dm_nfnet_f")


def test_architecture_without_weights_is_refused(tiny_data, tmp_path):
    r = nfx("finetune", tiny_data / "png", "--arch", "nf_resnet26", "--out", tmp_path)
    _assert_one_line_error(r, "no pretrained weights", "--no-pretrained")


def test_offline_download_failure_explains_weights(tiny_data, tmp_path):
    r = nfx("finetune", tiny_data / "png", "--arch", "test_nfnet", "--out", tmp_path)
    _assert_one_line_error(r, "--weights FILE")


def test_evaluate_json_prints_evaluation_json(tiny_run):
    r = nfx("evaluate", tiny_run.run_dir, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads((tiny_run.run_dir / "evaluation.json").read_text())


@pytest.mark.slow
def test_finetune_command_end_to_end(tiny_data, tmp_path):
    r = nfx("finetune", tiny_data / "dicom", "--arch", "test_nfnet", "--no-pretrained", "--epochs", "1",
            "--freeze-epochs", "0", "--bs", "4", "--size", "64", "--out", tmp_path, "--name", "cli")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cli" / "model.safetensors").is_file()
    assert "nfx evaluate" in r.stderr  # the next command is suggested
    # an NF net from scratch is measured to lose to a BatchNorm net: said, never silent
    assert "lost to a BatchNorm net of similar cost" in r.stderr.replace("\n", " ")


def test_the_nf_from_scratch_note_names_only_nf_nets_from_scratch():
    from nfx.export.card import _scratch_note
    from nfx.records import SCRATCH

    assert "BatchNorm" in _scratch_note({"weights_source": SCRATCH, "arch": "nf_regnet_b0"})
    assert _scratch_note({"weights_source": SCRATCH, "arch": "resnet18"}) == ""
    assert _scratch_note({"weights_source": "local file w.safetensors", "arch": "nf_regnet_b0"}) == ""


def test_resume_refuses_other_options(tiny_run):
    _assert_one_line_error(nfx("finetune", "--resume", tiny_run.run_dir, "--epochs", "3"), "--epochs", "--config")


def test_unreachable_hub_fails_fast_in_one_line(tiny_data, tmp_path):
    """Without HF_HUB_OFFLINE, huggingface_hub alone would retry ~50 s and log extra lines."""
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        pytest.skip("the hub is reachable from this machine; this test is about offline machines")
    except OSError:
        pass
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    r = subprocess.run([sys.executable, "-m", "nfx", "finetune", str(tiny_data / "png"), "--arch", "test_nfnet",
                        "--out", str(tmp_path)], capture_output=True, text=True, env={**env, "COLUMNS": "200"},
                       timeout=300)  # a hang guard only; tests do not judge wall-clock time
    _assert_one_line_error(r, "unreachable", "--weights FILE")


def test_every_finetune_flag_maps_to_a_config_field():
    import inspect as ins
    from dataclasses import fields

    from nfx.cli.train import FINETUNE_FLAGS, finetune
    from nfx.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    params = set(ins.signature(finetune).parameters)
    # --config, --resume and --agc (parsed into agc + agc_auto) are handled apart
    assert params - set(FINETUNE_FLAGS) == {"config", "resume", "agc"}
    known = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
    for flag, (section, key) in FINETUNE_FLAGS.items():
        names = {f.name for f in fields(known[section] if section in known else RunConfig)}
        assert key in names, (flag, section, key)


def test_a_class_without_training_images_is_refused(tiny_data, tmp_path):
    import shutil

    root = tmp_path / "d"
    for f in sorted((tiny_data / "png").rglob("*.png")):
        sp = "valid" if f.parent.name == "glaucoma" or int(f.name[3:7]) > 8 else "train"
        dst = root / sp / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
    assert not (root / "train" / "glaucoma").exists()
    r = nfx("finetune", root, "--arch", "test_nfnet", "--no-pretrained", "--size", "32", "--epochs", "1",
            "--bs", "4", "--out", tmp_path / "runs", "--workers", "0")
    _assert_one_line_error(r, "class 'glaucoma' has no training images", "add training images")


def test_usage_errors_are_one_line_with_exit_code_1():
    _assert_one_line_error(nfx("finetune", "sample_data/png", "--bs", "abc"), "Invalid value for '--bs'", "--help")
    _assert_one_line_error(nfx("finetune", "--frobnicate"), "No such option: --frobnicate")
    _assert_one_line_error(nfx("frob"), "No such command 'frob'")
    r = nfx()
    assert r.returncode == 0 and "finetune" in r.stdout  # bare `nfx` shows the help


def test_an_empty_class_folder_and_a_one_image_class_are_named(tiny_data, tmp_path):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(tiny_data / "png", root)
    (root / "suspect").mkdir()
    args = ["--arch", "test_nfnet", "--no-pretrained", "--size", "32", "--epochs", "1", "--bs", "4",
            "--out", tmp_path / "runs", "--workers", "0"]
    _assert_one_line_error(nfx("finetune", root, *args), "empty class folder", "suspect")
    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # not a copy of any image
    Image.fromarray(noise).save(root / "suspect" / "one.png")
    _assert_one_line_error(nfx("finetune", root, *args), "class 'suspect' has 1 image(s)", "at least 2")


def test_finetune_options_are_derived_from_the_config_fields():
    """Every config field marked with nfx.config.opt is a finetune option with the field's flag and
    help (placeholders filled from the code); no option is written by hand beside DATA, --config,
    --agc and --resume."""
    from dataclasses import fields

    import typer

    from nfx.cli import app
    from nfx.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    cmd = typer.main.get_command(app).commands["finetune"]
    by_flag = {o: p for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    marked = 0
    for cls in (DataConfig, ModelConfig, TrainConfig, RunConfig):
        for f in fields(cls):
            cli = f.metadata.get("cli")
            if not cli:
                continue
            flag = (cli["flag"] or "--" + f.name.replace("_", "-")).split("/")[0]
            assert flag in by_flag, flag
            help_text = by_flag[flag].help
            assert "{" not in help_text, (flag, help_text)  # every placeholder filled
            assert cli["help"].split("{")[0].strip() in help_text  # the field's own words
            marked += 1
    assert len(cmd.params) == marked + 4  # + DATA, --config, --agc, --resume
    assert "[default: 16]" in by_flag["--bs"].help and "[default: squish]" in by_flag["--resize"].help
