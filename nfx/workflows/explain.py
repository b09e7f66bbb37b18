"""explain: Grad-CAM overlays on the input the model sees (nfx.explain does the drawing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nfx.console import Printer
from nfx.errors import ConfigError
from nfx.workflows.loading import image_paths, load_run


def explain(run_dir: str | Path, images: list[str], out: str | Path, printer: Printer | None = None,
            target_class: str | None = None) -> list[dict[str, Any]]:
    """Grad-CAM overlays (input | overlay PNG per image) into `out`, on the resized input the
    model sees (the run's resize policy and DICOM frame). The explained class is the predicted one unless `target_class` is given."""
    printer = printer or Printer()
    from nfx import runs

    if (Path(run_dir) / runs.FOLDS).is_file():
        raise ConfigError(f"{run_dir}: a --folds parent holds {Path(run_dir).name}'s fold models; Grad-CAM explains one "
                          f"network: pass a fold, e.g. `nfx explain {Path(run_dir) / 'fold-1'} IMAGES`")
    run = load_run(run_dir)
    classes = list(run.info.classes)
    if target_class is not None and target_class not in classes:
        raise ConfigError(f"--class {target_class!r}: not a class of this model {classes}")
    paths, _ = image_paths(images)  # files that are not images are simply not explained
    from nfx.data.cache import ImageCache
    from nfx.explain import gradcam_overlays

    spec = run.info.input
    cache = ImageCache.for_spec(run.cfg.data.cache_dir, spec)
    with printer.progress(len(paths), "decoding") as bar:
        entries, bad = cache.fill(paths, on_done=lambda: bar.advance(1))
    res = gradcam_overlays(run.model, run.info, entries, paths, Path(out),
                           None if target_class is None else classes.index(target_class))
    bad_of = dict(bad)
    for r in res:
        if "error" in r and r["file"] in bad_of:
            r["error"] = bad_of[r["file"]]
    return res
