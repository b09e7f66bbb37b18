"""Seeded generator of the synthetic, PHI-free fundus-like sample dataset (sample_data/).

Two classes: `normal` (cup-to-disc ratio 0.15–0.40) and `glaucoma` (0.60–0.85), the clinical
sign that glaucoma enlarges the optic cup relative to the disc. Each synthetic patient has two
eyes (OD / OS, mirrored disc position) with their own labels (bilateral disease is likelier),
and per-patient variation in pigmentation, illumination and disc size, so a patient's two images
are correlated — exactly why splits must be grouped by patient.

Written twice: `png/<label>/<PATIENT>_<EYE>.png` and `dicom/<label>/<PATIENT>_<EYE>.dcm`
(RLE-lossless Ophthalmic Photography DICOM with PatientID and ImageLaterality).
Images are optic-disc-centred crops, the usual input of glaucoma classifiers.
Nothing here is derived from real patients.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("normal", "glaucoma")


def fundus(rng: np.random.Generator, size: int, cdr: float, eye: str, patient: dict) -> np.ndarray:
    """One uint8 RGB optic-disc-centred fundus crop (the usual input of glaucoma datasets such
    as REFUGE or ORIGA): orange-red retina with choroidal texture, vessels leaving the disc,
    the yellowish disc rim and the pale cup whose size relative to the disc is the label."""
    import cv2

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    side = 1 if eye == "OD" else -1
    # the disc is near the centre; the fovea side (temporal) is darker, mirrored between eyes
    cx = c + side * size * rng.uniform(-0.04, 0.04)
    cy = c + size * rng.uniform(-0.04, 0.04)
    dd = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)

    base = np.array(patient["tint"], dtype=np.float32)  # pigmentation varies per patient
    shade = np.clip(1.0 - 0.35 * side * (c - xx) / size - 0.25 * (dd / size) ** 2, 0.4, 1.2)[..., None]
    img = base[None, None, :] * shade * patient["gain"] * rng.uniform(0.92, 1.08)
    tex = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), size / 30)
    img += tex[..., None] * np.array([24, 10, 5], dtype=np.float32)

    r_disc = size * patient["disc"] * rng.uniform(0.95, 1.05)
    disc = np.clip((r_disc - dd) / 2.0, 0, 1)  # soft rim edge
    disc_col = np.array([245, 185, 120], dtype=np.float32) * patient["gain"]
    img = img * (1 - disc[..., None]) + disc_col * disc[..., None]
    r_cup = r_disc * cdr
    cup = np.clip((r_cup - dd) / 2.5, 0, 1)
    cup_col = np.array([255, 238, 200], dtype=np.float32)
    img = img * (1 - cup[..., None]) + cup_col * cup[..., None]

    # vessels leave the cup and run over rim and retina
    vessels = np.zeros((size, size), dtype=np.float32)
    for k in range(7):
        ang = rng.uniform(0, 2 * np.pi)
        curl = rng.uniform(-0.8, 0.8)
        pts = []
        for t in np.linspace(0, 1, 40):
            a = ang + curl * t
            rr = r_cup * 0.5 + t * size * 0.8
            pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
        pts_i = np.round(np.array(pts)).astype(np.int32)
        cv2.polylines(vessels, [pts_i], False, 1.0, thickness=3 if k < 3 else 2, lineType=cv2.LINE_AA)
    vessels = cv2.GaussianBlur(vessels, (0, 0), 0.8)
    img *= (1 - 0.5 * vessels)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def generate(out: str | Path, n_patients: int = 80, size: int = 96, seed: int = 0, formats=("png", "dicom")) -> dict:
    """Write the dataset under `out`; returns counts. Deterministic for a given seed."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    counts = {"images": 0, "patients": n_patients, "per_class": dict.fromkeys(CLASSES, 0)}
    for i in range(n_patients):
        pid = f"SYN{i + 1:04d}"
        patient = {
            "tint": (rng.uniform(170, 220), rng.uniform(70, 110), rng.uniform(30, 60)),
            "gain": rng.uniform(0.8, 1.1),
            "disc": rng.uniform(0.26, 0.34),
        }
        diseased = rng.random() < 0.5
        for eye in ("OD", "OS"):
            # bilateral disease is likelier; asymmetric cases exist
            glaucoma = diseased if rng.random() < 0.85 else not diseased
            label = "glaucoma" if glaucoma else "normal"
            cdr = rng.uniform(0.60, 0.85) if glaucoma else rng.uniform(0.15, 0.40)
            img = fundus(rng, size, cdr, eye, patient)
            name = f"{pid}_{eye}"
            if "png" in formats:
                _write_png(out / "png" / label / f"{name}.png", img)
            if "dicom" in formats:
                _write_dicom(out / "dicom" / label / f"{name}.dcm", img, pid, eye, i)
            counts["images"] += 1
            counts["per_class"][label] += 1
    return counts


def _write_png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, optimize=True)


def _write_dicom(path: Path, img: np.ndarray, pid: str, eye: str, index: int) -> None:
    from pydicom.dataset import Dataset as DcmDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    # Deterministic UIDs (derived from patient/eye) so regenerating gives identical files.
    prefix = "1.2.826.0.1.3680043.8.498."  # pydicom's documented example root
    sop_uid = generate_uid(prefix=prefix, entropy_srcs=["nfx-synthetic", pid, eye])
    study_uid = generate_uid(prefix=prefix, entropy_srcs=["nfx-synthetic-study", pid])
    series_uid = generate_uid(prefix=prefix, entropy_srcs=["nfx-synthetic-series", pid, eye])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # Ophthalmic Photography 8 Bit
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = DcmDataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = pid
    ds.PatientName = f"Synthetic^{pid}"
    ds.Modality = "OP"
    ds.ImageLaterality = "R" if eye == "OD" else "L"
    ds.StudyDescription = "nfx synthetic fundus (not a real patient)"
    ds.InstanceNumber = index + 1
    ds.Rows, ds.Columns = img.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(img).tobytes()
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)  # keep the seeded UID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
