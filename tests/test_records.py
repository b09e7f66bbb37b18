"""ModelInfo / InputSpec: one reader and writer for model.json and the ONNX metadata."""

from __future__ import annotations

import json

import pytest

from nfx.errors import RunError
from nfx.records import InputSpec, ModelInfo

INFO = ModelInfo(arch="test_nfnet", classes=("glaucoma", "normal"), weights_source="trained from scratch",
                 input=InputSpec(size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize="crop", frame=2))


def test_model_json_round_trip(tmp_path):
    INFO.write(tmp_path)
    d = json.loads((tmp_path / "model.json").read_text())
    assert d["num_classes"] == 2 and d["resize"] == "crop" and d["frame"] == 2 and d["input_size"] == 64
    assert ModelInfo.read(tmp_path) == INFO
    assert INFO.from_scratch and INFO.num_classes == 2


def test_onnx_metadata_round_trip_keeps_frame_and_policy():
    meta = INFO.onnx_metadata()
    assert all(isinstance(v, str) for v in meta.values())
    back = ModelInfo.from_onnx_metadata(meta)
    assert back.input == INFO.input and back.classes == INFO.classes and back.arch == INFO.arch


def test_records_written_before_the_policy_existed_mean_letterbox(tmp_path):
    old = {"arch": "test_nfnet", "classes": ["a", "b"], "num_classes": 2, "input_size": 64, "mean": [0.5] * 3,
           "std": [0.5] * 3, "weights_source": "x", "resize": "letterbox (longest side → input_size, zero padding)"}
    (tmp_path / "model.json").write_text(json.dumps(old))
    info = ModelInfo.read(tmp_path)
    assert info.input.resize == "letterbox" and info.input.frame is None
    meta = {"nfx_classes": '["a", "b"]', "nfx_input_size": "64", "nfx_mean": "[0.5, 0.5, 0.5]",
            "nfx_std": "[0.5, 0.5, 0.5]", "nfx_arch": "test_nfnet", "nfx_resize": ""}
    assert ModelInfo.from_onnx_metadata(meta).input.resize == "letterbox"


@pytest.mark.parametrize("content", ["{not json", '{"arch": "x"}', "[]"])
def test_a_corrupt_model_json_is_one_clear_error(tmp_path, content):
    (tmp_path / "model.json").write_text(content)
    with pytest.raises(RunError, match=r"model\.json: unreadable"):
        ModelInfo.read(tmp_path)


def test_missing_model_json(tmp_path):
    with pytest.raises(RunError, match=r"model\.json: missing"):
        ModelInfo.read(tmp_path)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown resize policy"):
        InputSpec(size=64, mean=(0,) * 3, std=(1,) * 3, resize="stretch")


def test_short_reason_is_one_short_line():
    from nfx.errors import short_reason

    assert short_reason(ValueError("first\nsecond")) == "first"
    assert short_reason(RuntimeError("plugins failed:\n  pylibjpeg: missing\nmore")) == \
        "plugins failed: pylibjpeg: missing"  # an introducing line takes the next one along
    assert short_reason(KeyError()) == "KeyError"
    assert short_reason(OSError("x" * 500), limit=50) == "x" * 50
    assert short_reason(ValueError("bad"), with_type=True) == "ValueError: bad"


def test_atomic_path_replaces_only_on_success(tmp_path):
    from nfx.runs import atomic_path

    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and len(list(tmp_path.iterdir())) == 1


def test_one_upgrade_step_for_old_run_configs(tmp_path):
    """A config.json written before --keep-patient-ids, --voi-fallback and --resize existed: read as
    that run's record it gets what the run did (raw ids, stored VOI range, letterbox); used as the
    template of a new run (--config) it gets today's defaults (pseudonyms, minmax, squish). In memory
    both are plain values, never an 'older run' None."""
    import json

    from nfx.config import DataConfig, RunConfig
    from nfx.records import DEFAULT_VOI_FALLBACK

    d = RunConfig().to_dict()
    for k in ("keep_patient_ids", "voi_fallback", "resize"):
        d["data"].pop(k)
    old = tmp_path / "config.json"
    old.write_text(json.dumps(d))
    run = RunConfig.read_run(old).data
    assert (run.keep_patient_ids, run.voi_fallback, run.resize) == (True, "stored", "letterbox")
    template = RunConfig.load(old).data
    assert (template.keep_patient_ids, template.voi_fallback, template.resize) == (False, DEFAULT_VOI_FALLBACK, "squish")
    d["data"].update(keep_patient_ids=None, voi_fallback=None)  # written as null by a later version
    old.write_text(json.dumps(d))
    assert RunConfig.read_run(old).data.keep_patient_ids is True and RunConfig.load(old).data.keep_patient_ids is False
    # a recent run's own values are kept as written
    d["data"].update(keep_patient_ids=False, voi_fallback="percentile", resize="crop")
    old.write_text(json.dumps(d))
    assert RunConfig.read_run(old).data == RunConfig.load(old).data
    assert RunConfig.read_run(old).data.voi_fallback == "percentile"
    assert DataConfig().keep_patient_ids is False and DataConfig().voi_fallback == DEFAULT_VOI_FALLBACK
