"""Model factory: names, pretrained weights from a local file, refusal of random init."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from nfx.errors import ModelError
from nfx.models.factory import create_model, head_and_body, no_decay_params, resolve_arch


def test_nfnet_fn_maps_to_dm_weights_with_a_note():
    notes = []
    assert resolve_arch("nfnet_f1", pretrained=True, weights=None, notes=notes) == "dm_nfnet_f1"
    assert notes and "dm_nfnet_f1" in notes[0]
    assert resolve_arch("nfnet_f1", pretrained=False, weights=None, notes=[]) == "nfnet_f1"


def test_architecture_without_weights_is_refused_with_the_list():
    with pytest.raises(ModelError) as e:
        resolve_arch("nf_resnet26", pretrained=True, weights=None, notes=[])
    msg = str(e.value)
    assert "dm_nfnet_f0" in msg and "eca_nfnet_l0" in msg and "--no-pretrained" in msg and "--weights" in msg


def test_unknown_architecture_suggests_names():
    with pytest.raises(ModelError, match="did you mean"):
        resolve_arch("dm_nfnet_f9", pretrained=True, weights=None, notes=[])


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth-wrapped"])
def test_local_weights_file_is_loaded(tmp_path, fmt):
    torch.manual_seed(123)
    src = timm.create_model("test_nfnet")  # 1000-class "pretrained" model we saved ourselves
    sd = src.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        path = tmp_path / "w.pth"
        torch.save({"state_dict": sd} if fmt == "pth-wrapped" else sd, path)
    model, prep, source = create_model("test_nfnet", num_classes=3, pretrained=True, weights=str(path))
    assert source == f"local file {path.name}"
    got = model.state_dict()
    body_keys = [k for k in sd if not k.startswith("head.fc")]
    assert body_keys
    for k in body_keys:
        assert torch.equal(got[k], sd[k]), k
    assert got["head.fc.weight"].shape == (3, sd["head.fc.weight"].shape[1])  # new head
    assert prep.mean == (0.5, 0.5, 0.5) and prep.train_size == 160


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}, str(path))
    with pytest.raises(ModelError, match="random init"):
        create_model("test_nfnet", num_classes=2, pretrained=True, weights=str(path))


def test_missing_weights_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        create_model("test_nfnet", 2, True, weights=str(tmp_path / "nope.safetensors"))


def test_head_by_identity_and_decay_exemptions():
    m = timm.create_model("dm_nfnet_f0", num_classes=2)  # has skipinit gains (test_nfnet has none)
    head, body = head_and_body(m)
    assert {id(p) for p in head} == {id(p) for p in m.get_classifier().parameters()}
    assert len(head) + len(body) == len(list(m.parameters()))
    names = {id(p): n for n, p in m.named_parameters()}
    exempt = {names[id(p)] for p in no_decay_params(m)}
    assert any(n.endswith(".gain") for n in exempt)
    assert any(n.endswith("skipinit_gain") for n in exempt)
    assert all(not n.endswith(".weight") or "norm" in n for n in exempt)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_weights_with_wrong_shapes_list_the_mismatched_keys(tmp_path, fmt):
    sd = timm.create_model("test_nfnet", pretrained=False).state_dict()
    key = next(k for k, v in sd.items() if v.ndim == 4)  # the first conv weight
    sd[key] = torch.zeros(sd[key].shape[0] + 5, *sd[key].shape[1:])
    f = tmp_path / f"w.{fmt}"
    save_file(sd, str(f)) if fmt == "safetensors" else torch.save(sd, f)
    with pytest.raises(ModelError, match=rf"1 tensor\(s\) have other shapes than test_nfnet's: {key} \(file \[") as e:
        create_model("test_nfnet", 2, True, weights=str(f))
    assert "same architecture" in str(e.value)
