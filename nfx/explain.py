"""Grad-CAM overlays for a trained run (adapter over the maintained `grad-cam` package).

Why the library and not a hand-rolled CAM: pytorch-grad-cam handles the hook bookkeeping,
gradient release and the CAM normalisation/resizing, and offers the other CAM variants if a
user wants them; nfx only has to pick the layer and prepare the image exactly as the model saw it.

Target layer: the last feature stage, found generically — timm's `feature_info[-1]['module']`
(`final_conv` for NFNets, `layer4` for ResNets), else the last module producing a 4-D map while
`forward_features` runs. The image is decoded, resized (the run's policy) and normalised by the same cache path
as training and evaluation, and the overlay is drawn on that resized input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfx import runs
from nfx.records import ModelInfo


def find_target_layer(model: torch.nn.Module, input_size: int = 64) -> tuple[str, torch.nn.Module]:
    """(name, module) of the last spatial feature layer before the head."""
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1]
        name = last.get("module") if isinstance(last, dict) else None
        if name:
            try:
                return name, model.get_submodule(name)
            except AttributeError:
                pass
    # fallback: watch forward_features and keep the last module whose output is N×C×H×W
    seen: list[str] = []
    hooks = []
    for name, mod in model.named_modules():
        if name:
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, n=name: seen.append(n) if torch.is_tensor(o) and o.dim() == 4 else None))
    try:
        with torch.no_grad():
            p = next(model.parameters())
            x = torch.zeros(1, 3, input_size, input_size, device=p.device, dtype=p.dtype)
            (model.forward_features if hasattr(model, "forward_features") else model)(x)
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise ValueError("no 4-D feature map found for Grad-CAM")
    last = seen[-1]  # hooks fire when a module finishes: the last is the outermost, latest map
    return last, model.get_submodule(last)


def gradcam_overlays(model: torch.nn.Module, info: ModelInfo, entries: list[str | None],
                     paths: list[str], out_dir: Path, target_class: int | None = None,
                     min_size: int = 256) -> list[dict[str, Any]]:
    """For each decoded cache entry (.npy, H×W×3 float in [0, 1], resized to the input size):
    a PNG with the input and its Grad-CAM overlay side by side. Returns one dict per path."""
    from PIL import Image
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from nfx.data.intensity import normalise

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    layer_name, layer = find_target_layer(model, info.input.size)
    classes = info.classes
    results: list[dict[str, Any]] = []
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for i, (path, entry) in enumerate(zip(paths, entries)):
            if entry is None:
                results.append({"file": path, "error": "could not be decoded"})
                continue
            img = np.clip(np.load(entry).astype(np.float32), 0, 1)
            x = torch.from_numpy(normalise(img, info.input.mean, info.input.std)[None])
            x = x.to(next(model.parameters()).device)
            with torch.no_grad():
                probs = torch.softmax(model(x).float(), 1)[0].cpu().numpy()
            k = int(probs.argmax()) if target_class is None else target_class
            heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(k)])[0]
            overlay = show_cam_on_image(img, heat, use_rgb=True, image_weight=0.55)
            pair = np.concatenate([(img * 255).round().astype(np.uint8), overlay], axis=1)
            scale = max(1, int(np.ceil(min_size / pair.shape[0])))
            pic = Image.fromarray(pair).resize((pair.shape[1] * scale, pair.shape[0] * scale), Image.NEAREST)
            dest = out_dir / f"{i:03d}_{Path(path).stem}_gradcam.png"
            with runs.atomic_path(dest) as tmp:
                pic.save(tmp, format="PNG")
            results.append({
                "file": path, "overlay": str(dest), "layer": layer_name,
                "prediction": classes[int(probs.argmax())], "probability": round(float(probs.max()), 6),
                "explained_class": classes[k],
                "cam_max": float(heat.max()),
            })
    return results
