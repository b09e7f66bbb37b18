"""ONNX export with a dynamic batch axis, metadata, and verification against torch.

Every export is checked with onnx.checker and run once through ONNX Runtime on random input;
the max abs difference to the torch model is reported and above `tolerance` the export fails
(the file is then not left in place). Height and width are fixed at the run's input size.

Metadata (model.metadata_props): nfx_classes (JSON list), nfx_input_size, nfx_mean, nfx_std,
nfx_arch, nfx_resize (squish | letterbox | crop), nfx_frame (frame of multi-frame DICOMs, single-frame ones give their only frame; or empty), nfx_version — everything needed to preprocess an image without nfx.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from nfx import runs
from nfx.errors import ExportError, short_reason
from nfx.records import ModelInfo

INPUT, OUTPUT = "image", "logits"


def export_onnx(model: Any, info: ModelInfo, out: Path, tolerance: float = 1e-4, opset: int = 18) -> dict[str, Any]:
    import onnx
    import torch

    from nfx import __version__

    model = model.eval().float().cpu()
    size = info.input.size
    example = torch.randn(2, 3, size, size)
    try:
        with runs.atomic_path(out) as tmp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                batch = torch.export.Dim("batch", min=1, max=4096)
                prog = torch.onnx.export(
                    model, (example,), dynamo=True, external_data=False, opset_version=opset,
                    input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes=({0: batch},),
                    verbose=False,
                )
                prog.save(str(tmp), external_data=False)
            m = onnx.load(str(tmp))
            meta = {**info.onnx_metadata(), "nfx_weights_source": info.weights_source, "nfx_version": __version__}
            del m.metadata_props[:]
            for k, v in meta.items():
                m.metadata_props.add(key=k, value=v)
            onnx.checker.check_model(m, full_check=True)
            onnx.save(m, str(tmp))
            diff = verify(model, tmp, size)
            if not diff <= tolerance:  # raising inside atomic_path discards the file
                raise ExportError(
                    f"{out}: ONNX Runtime output differs from torch by {diff:.2e} (> {tolerance:.0e}); "
                    "the export was discarded — report this with the architecture name"
                )
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"{out}: ONNX export failed ({short_reason(e, 200)}); run with --debug for details") from e
    return {"max_abs_diff": diff, "opset": opset, "input_size": size, "size_bytes": out.stat().st_size}


def verify(model: Any, path: Path, size: int, batch_sizes=(1, 3)) -> float:
    """Max abs difference between torch and ONNX Runtime on random inputs (several batch sizes,
    which also proves the batch axis is dynamic)."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for b in batch_sizes:
        x = torch.randn(b, 3, size, size, generator=g)
        with torch.inference_mode():
            ref = model(x).numpy()
        got = sess.run([OUTPUT], {INPUT: x.numpy()})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def local_providers() -> list[str]:
    """ONNX Runtime providers that run on this machine, best first (CUDA/TensorRT when
    onnxruntime-gpu is installed, else CPU). AzureExecutionProvider, listed by some builds,
    calls a remote endpoint: never used for a medical image."""
    import onnxruntime as ort

    order = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    avail = ort.get_available_providers()
    return [p for p in order if p in avail] or ["CPUExecutionProvider"]


class OnnxPredictor:
    """Predict with an nfx ONNX file, using only its metadata for preprocessing."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        self.path = Path(path)
        try:
            self.sess = ort.InferenceSession(str(self.path), providers=local_providers())
        except Exception as e:  # not a readable ONNX model (truncated, overwritten, not ONNX)
            raise ExportError(f"{self.path}: not a loadable ONNX model ({short_reason(e, 100)}); "
                              "re-create it with `nfx export RUN --onnx`") from e
        meta = self.sess.get_modelmeta().custom_metadata_map
        try:
            self.info = ModelInfo.from_onnx_metadata(meta)
        except KeyError as e:
            raise ExportError(f"{self.path}: not an nfx ONNX file (metadata {e} missing); re-export with `nfx export`") from e

    def predict_arrays(self, x: np.ndarray) -> np.ndarray:
        logits = self.sess.run([OUTPUT], {INPUT: x.astype(np.float32)})[0]
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def predict_files(self, paths: list[str], cache_dir: str | None = None, bs: int = 32, **progress):
        """Files → probabilities, preprocessed exactly as the metadata says (size, resize policy,
        DICOM frame, mean/std) through nfx's one inference input path. `progress`: the
        on_decoded / on_batch callbacks of nfx.data.cache.predict_files."""
        from nfx.data.cache import predict_files

        return predict_files(paths, self.predict_arrays, spec=self.info.input, n_classes=self.info.num_classes,
                             cache_dir=cache_dir, bs=bs, **progress)
