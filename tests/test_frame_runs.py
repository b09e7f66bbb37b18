"""A run trained on multi-frame DICOMs with --frame: every later step (explain, predict through
torch and through ONNX Runtime) decodes the same frame, read from the run's records."""

from __future__ import annotations

import numpy as np
import pytest

from nfx import api
from nfx.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from nfx.console import Printer


def _multiframe(path, frames: np.ndarray, patient: str) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = patient, "OT"
    n, h, w = frames.shape
    ds.Rows, ds.Columns, ds.NumberOfFrames = h, w, n
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = frames.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def frame_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for k, cls in enumerate(["a", "b"]):
        (root / cls).mkdir()
        for i in range(8):
            f = rng.integers(0, 30, (3, 32, 32))
            f[1, :, : 8 + 16 * k] += 120  # frame 1 carries the class
            f[1] += np.kron(rng.integers(0, 101, (4, 4)), np.ones((8, 8), int))  # its own shapes (max 255): no copies
            _multiframe(root / cls / f"{cls}{i}.dcm", f, f"P{cls}{i}")
    return root


def test_explain_and_predict_use_the_runs_frame(frame_data, tmp_path):
    cfg = RunConfig(data=DataConfig(path=str(frame_data), size=32, num_workers=0, frame=1, valid_pct=0.25),
                    model=ModelConfig(arch="test_nfnet", pretrained=False),
                    train=TrainConfig(epochs=1, bs=4, agc=0.16), out=str(tmp_path), name="frame")
    d = api.finetune(cfg, Printer(quiet=True)).run_dir
    files = sorted(str(p) for p in (frame_data / "a").glob("*.dcm"))[:2]
    res = api.explain(d, files, tmp_path / "cam", Printer(quiet=True))
    assert all("error" not in r for r in res), res  # a multi-frame file without the frame would be refused
    assert all((tmp_path / "cam" / r["overlay"].split("/")[-1]).is_file() for r in res)
    run = api.load_run(d)
    assert run.info.input.frame == 1
    p_torch, bad = api.predict_probs(run.model, files, run.info, None, Printer(quiet=True))
    assert not bad
    api.export(d, Printer(quiet=True))
    onnx_res = api.predict(d, files, Printer(quiet=True))
    got = np.array([[r["probabilities"][c] for c in run.info.classes] for r in onnx_res])
    np.testing.assert_allclose(got, p_torch, atol=1e-4)
