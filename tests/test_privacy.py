"""No patient data in outputs: a run on DICOMs carrying a (fake) name, birth date and patient id
never writes them — not in the run folder (splits, reports, evaluation, predictions, ONNX
metadata, model card), not in predict's CSV, not in anything printed. Patient ids appear as
stable pseudonyms; --keep-patient-ids opts out."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from nfx.data.pseudonym import PREFIX, pseudonym

# unusual enough not to occur by chance in base64 plots or hex digests
NAME, BIRTH = "Quixotic^Zebulon", "19420317"


def _mrn(i: int) -> str:
    return f"MRN{770000 + i}"


@pytest.fixture(scope="module")
def phi_data(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("phi") / "data"
    shutil.copytree(tiny_data / "dicom", root)
    ids = {}
    for f in sorted(root.rglob("*.dcm")):
        ds = pydicom.dcmread(f)
        pid = ids.setdefault(str(ds.PatientID), _mrn(len(ids)))
        ds.PatientID, ds.PatientName, ds.PatientBirthDate = pid, NAME, BIRTH
        ds.save_as(f)
    return root, sorted(set(ids.values()))


def _nfx(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nfx", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def _scan(paths, needles) -> list[str]:
    hits = []
    for p in paths:
        data = p.read_bytes() if isinstance(p, Path) else p.encode()
        for n in needles:
            if n.encode() in data:
                hits.append(f"{p if isinstance(p, Path) else 'console'}: {n}")
    return hits


@pytest.mark.slow
def test_no_name_birth_date_or_raw_patient_id_in_any_output(phi_data, tmp_path):
    data, mrns = phi_data
    out = tmp_path / "runs"
    logs = []
    r = _nfx("finetune", data, "--arch", "test_nfnet", "--no-pretrained", "--size", "32", "--epochs", "1",
             "--bs", "4", "--workers", "0", "--out", out, "--name", "phi")
    assert r.returncode == 0, r.stderr
    run = out / "phi"
    logs += [r.stdout, r.stderr]
    for args in (["evaluate", run, "--per-patient"], ["evaluate", run, data], ["export", run],
                 ["predict", run, data, "--out", tmp_path / "pred.csv"], ["inspect", data]):
        r = _nfx(*args)
        assert r.returncode == 0, (args, r.stderr)
        logs += [r.stdout, r.stderr]
    files = [p for p in run.rglob("*") if p.is_file()] + [tmp_path / "pred.csv"]
    assert any(p.name == "model.onnx" for p in files) and any(p.name == "MODEL.md" for p in files)
    needles = [NAME, "Quixotic", "Zebulon", BIRTH, "1942-03-17", *mrns]
    assert not _scan(files + logs, needles)
    # pseudonyms instead: stable (the same patient, the same pseudonym, in every output)
    rows = list(csv.DictReader(open(run / "splits.csv")))
    assert {r["patient"] for r in rows} == {pseudonym(m) for m in mrns}
    assert all(r["patient"].startswith(PREFIX) for r in rows)
    preds = list(csv.DictReader(open(run / "predictions.csv")))
    assert {p["patient"] for p in preds} <= {pseudonym(m) for m in mrns}
    assert '"keep_patient_ids": false' in (run / "config.json").read_text()


@pytest.mark.slow
def test_keep_patient_ids_opts_out_and_the_check_can_fail(phi_data, tmp_path):
    data, mrns = phi_data
    r = _nfx("finetune", data, "--arch", "test_nfnet", "--no-pretrained", "--size", "32", "--epochs", "1",
             "--bs", "4", "--workers", "0", "--out", tmp_path, "--name", "raw", "--keep-patient-ids")
    assert r.returncode == 0, r.stderr
    splits = (tmp_path / "raw" / "splits.csv").read_text()
    assert _scan([tmp_path / "raw" / "splits.csv"], mrns)  # the scan above would have caught them
    assert PREFIX not in splits


def test_pseudonyms_are_stable_distinct_and_keyed(monkeypatch):
    monkeypatch.delenv("NFX_PSEUDONYM_KEY", raising=False)
    a = pseudonym("MRN770001")
    assert a == pseudonym("MRN770001") and a != pseudonym("MRN770002") and "770001" not in a
    monkeypatch.setenv("NFX_PSEUDONYM_KEY", "a secret")
    keyed = pseudonym("MRN770001")
    assert keyed.startswith(PREFIX) and keyed != a and keyed == pseudonym("MRN770001")
