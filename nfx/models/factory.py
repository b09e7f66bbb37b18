"""timm model factory: architecture names, pretrained weights, head/body split, preprocessing.

Rules (domain facts timm and fastai users get wrong):
- `nfnet_fN` has no pretrained weights in timm; with --pretrained it is mapped to `dm_nfnet_fN`
  with a visible note. Any other architecture without weights is refused with the list of
  names that have them, so nobody trains from random init believing it is fine-tuning.
- Weights come from the hub through timm, or from a local file (--weights) through timm's
  `pretrained_cfg_overlay=dict(file=...)`. A failed download explains --weights.
- The classifier is timm's own (`num_classes=n`); no BatchNorm is added. The head is found by
  identity (`model.get_classifier()`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfx.errors import ConfigError, ModelError, short_reason

NF_PREFIXES = ("dm_nfnet", "nfnet", "eca_nfnet", "nf_", "test_nfnet")


@dataclass(frozen=True)
class Preprocessing:
    """What an input image must look like for this model (from the checkpoint's pretrained_cfg)."""

    train_size: int
    test_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


def is_nf(arch: str) -> bool:
    return arch.startswith(NF_PREFIXES)


def has_pretrained(arch: str) -> bool:
    import timm

    return bool(timm.list_pretrained(arch)) or bool(timm.list_pretrained(f"{arch}.*"))


def resolve_arch(arch: str, pretrained: bool, weights: str | None, notes: list[str]) -> str:
    """Validate the name; map nfnet_fN → dm_nfnet_fN when weights are wanted from the hub."""
    import timm

    base = arch.split(".")[0]
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `timm.list_models()`"
        raise ModelError(f"unknown architecture {arch!r}{hint}")
    if not pretrained or weights:
        return arch
    if not has_pretrained(arch):
        m = re.fullmatch(r"nfnet_f(\d)", base)
        if m and int(m.group(1)) <= 6:
            new = f"dm_nfnet_f{m.group(1)}"
            notes.append(
                f"{arch} has no pretrained weights in timm; using {new} (DeepMind's ImageNet weights, "
                "same architecture family). Pass --no-pretrained to really train nfnet_fN from scratch."
            )
            return new
        with_w = sorted({n.split(".")[0] for n in timm.list_pretrained("*nfnet*") + timm.list_pretrained("nf_*")})
        raise ModelError(
            f"{arch} has no pretrained weights in timm, so fine-tuning it would start from random init; "
            f"choose one with weights ({', '.join(with_w)}), pass --weights FILE, or --no-pretrained to train from scratch"
        )
    return arch


def create_model(
    arch: str,
    num_classes: int,
    pretrained: bool,
    weights: str | None = None,
    notes: list[str] | None = None,
    drop_path: float = 0.0,
    dropout: float = 0.0,
) -> tuple[Any, Preprocessing, str]:
    """Returns (model, preprocessing, weights_source). weights_source is shown in every report.
    `drop_path` / `dropout`: timm's drop_path_rate (stochastic depth, rising to this rate at the
    last block) and drop_rate (dropout before the classifier); training-time only."""
    import timm

    notes = notes if notes is not None else []
    arch = resolve_arch(arch, pretrained, weights, notes)
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    if dropout:
        kwargs["drop_rate"] = dropout
    if weights:
        wpath = Path(weights)
        if not wpath.is_file():
            raise ModelError(f"{weights}: weights file not found; pass a .safetensors or .pth state dict")
        kwargs["pretrained_cfg_overlay"] = {"file": str(wpath.resolve())}
        source = f"local file {wpath.name}"
        import torch

        rng = torch.random.get_rng_state()
        try:
            model = timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as e:
            wrong = _shape_mismatches(wpath, arch, num_classes)
            if wrong:
                shown = ", ".join(f"{k} (file {list(a)} vs model {list(b)})" for k, a, b in wrong[:3])
                raise ModelError(
                    f"{weights}: {len(wrong)} tensor(s) have other shapes than {arch}'s: {shown}"
                    + (" …" if len(wrong) > 3 else "") + "; pass weights of the same architecture"
                ) from e
            raise ModelError(
                f"{weights}: could not load weights into {arch} ({short_reason(e, 200)}); "
                "the file must be a state dict (safetensors or torch) of the same architecture"
            ) from e
        # timm loads non-strictly when the class count differs, so a file of another architecture
        # would leave the body at random init without a word. Compare with that random init.
        torch.random.set_rng_state(rng)
        init = timm.create_model(arch, pretrained=False, num_classes=num_classes)
        unchanged = _fraction_unchanged(model, init)
        if unchanged > 0.5:
            raise ModelError(
                f"{weights}: {unchanged:.0%} of {arch}'s body weights were not in the file (they kept "
                "their random init); pass weights of the same architecture"
            )
    elif pretrained:
        offline = _go_offline_if_hub_unreachable()
        try:
            model = timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as e:
            why = "the hub is unreachable from this machine and they are not in the local cache" if offline else short_reason(e, 200)
            raise ModelError(
                f"could not get pretrained weights for {arch} from the Hugging Face hub ({why}); "
                "offline, download them elsewhere and pass --weights FILE (safetensors or state dict), "
                "or pass --no-pretrained to train from scratch"
            ) from e
        tag = model.pretrained_cfg.get("hf_hub_id") or model.pretrained_cfg.get("tag") or arch
        source = f"pretrained {tag} (hub)"
    else:
        model = timm.create_model(arch, pretrained=False, **kwargs)
        source = "trained from scratch"
    return model, preprocessing_of(model), source


def _go_offline_if_hub_unreachable(timeout: float = 3.0) -> bool:
    """Without a route to the hub, huggingface_hub retries for ~50 s (measured here) and logs
    a warning line before failing. Probe the endpoint once (direct TCP; skipped behind a proxy);
    if it is unreachable switch huggingface_hub to offline mode for this process, so weights in the
    local cache still load and a miss fails at once. Returns True when offline."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return False
    except OSError:
        constants.HF_HUB_OFFLINE = True
        return True


def build_for_inference(arch: str, num_classes: int) -> Any:
    """The architecture with random init, ready for `load_state_dict` of a trained run."""
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=num_classes)


def _fraction_unchanged(model: Any, init: Any) -> float:
    """Share of body parameter elements identical to a fresh random init (by element count)."""
    import torch

    _, body = head_and_body(model)
    body_ids = {id(p) for p in body}
    ref = dict(init.named_parameters())
    same = total = 0
    for name, p in model.named_parameters():
        if id(p) not in body_ids or name not in ref:
            continue
        total += p.numel()
        if torch.equal(p.detach(), ref[name].detach()):
            same += p.numel()
    return same / total if total else 0.0


def preprocessing_of(model: Any) -> Preprocessing:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    test = cfg.get("test_input_size")
    test_size = int(test[-1]) if test else size
    return Preprocessing(
        train_size=size,
        test_size=test_size,
        mean=tuple(float(x) for x in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(x) for x in cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=str(cfg.get("interpolation", "bilinear")),
    )


def head_and_body(model: Any) -> tuple[list[Any], list[Any]]:
    """(head params, body params), the head found by identity via timm's get_classifier()."""
    head = model.get_classifier()
    head_ids = {id(p) for p in head.parameters()}
    if not head_ids:
        raise ModelError(f"{type(model).__name__}: get_classifier() has no parameters; cannot find the head")
    params = list(model.parameters())
    return [p for p in params if id(p) in head_ids], [p for p in params if id(p) not in head_ids]


def batchnorm_layers(model: Any) -> list[Any]:
    """The model's BatchNorm layers (1d/2d/3d, sync): the layers whose statistics depend on the batch."""
    import torch

    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


# BatchNorm in train mode needs more than one value per channel: at micro-batch 1 the last feature map
# (stride 32) must be larger than 1 x 1, which 64 px gives every timm ResNet/RegNet (2 x 2 = 4 values)
BN_MIN_SIZE_AT_BS1 = 64


def check_batchnorm(model: Any, arch: str, bn: str, bs: int, size: int) -> bool:
    """The --bn rules that need the model: 'frozen' needs BatchNorm layers; train-mode BatchNorm at
    micro-batch 1 needs inputs of BN_MIN_SIZE_AT_BS1 px (else torch fails mid-epoch with 'Expected more
    than 1 value per channel'). Returns whether the model has BatchNorm layers."""
    has_bn = bool(batchnorm_layers(model))
    if bn == "frozen" and not has_bn:
        raise ConfigError(f"--bn frozen: {arch} has no BatchNorm layers (nothing to freeze); drop --bn frozen")
    if bn == "train" and has_bn and bs == 1 and size < BN_MIN_SIZE_AT_BS1:
        raise ConfigError(f"--bs 1 with {arch} (BatchNorm) needs --size {BN_MIN_SIZE_AT_BS1} or more (got {size}): "
                          "batch statistics of one image over a 1 x 1 feature map are undefined; raise --size, "
                          "raise --bs, or pass --bn frozen")
    return has_bn


def no_decay_params(model: Any) -> list[Any]:
    """Parameters exempt from weight decay, as DeepMind does for NF nets: biases, the gains of
    weight-standardised convolutions (`*.gain`), `skipinit_gain`, and normalisation layers."""
    import torch

    norm_types = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)
    out, seen = [], set()
    for _name, mod in model.named_modules():
        for name, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            if isinstance(mod, norm_types) or name in ("bias", "gain", "skipinit_gain") or p.ndim == 0:
                out.append(p)
                seen.add(id(p))
    return out


def _shape_mismatches(path: Path, arch: str, num_classes: int) -> list[tuple[str, tuple, tuple]]:
    """(key, file shape, model shape) for tensors of a weights file that do not fit `arch`
    (the classifier excluded: its class count may differ). Loaded without unpickling code."""
    import timm
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else {}
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    except Exception:
        return []
    head_ids = {id(t) for t in model.get_classifier().parameters()} if hasattr(model, "get_classifier") else set()
    head = {n for n, t in model.named_parameters() if id(t) in head_ids}
    own = model.state_dict()
    return [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
            if k in own and k not in head and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
