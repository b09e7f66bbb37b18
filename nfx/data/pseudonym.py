"""Patient ids in nfx's outputs are pseudonyms (pure; stdlib only).

Contract:
- `pseudonym(pid)` = "anon-" + 12 hex digits of SHA-256 over a fixed nfx prefix and the id, or
  of HMAC-SHA-256 keyed by $NFX_PSEUDONYM_KEY when that is set. Deterministic: the same patient
  gets the same pseudonym in every run and every dataset (with the same key), so patient-level
  splits, bootstrap intervals and the leakage check between a run and new data keep working.
- This is pseudonymisation, not anonymisation: without a key, ids with few possible values
  (e.g. 6-digit MRNs) can be recovered by hashing every candidate; set NFX_PSEUDONYM_KEY to a
  secret (and keep it to compare runs) when outputs leave the institution.
- Applied where patient ids enter nfx (discovery), so splits.csv, split_summary.json,
  predictions.csv, evaluation.json, reports, warnings and errors only ever see pseudonyms.
  `--keep-patient-ids` opts out (recorded in config.json as data.keep_patient_ids).
"""

from __future__ import annotations

import hashlib
import hmac
import os

PREFIX = "anon-"
_SALT = b"nfx-patient-pseudonym-v1\0"


def pseudonym(pid: str, key: str | None = None) -> str:
    key = os.environ.get("NFX_PSEUDONYM_KEY") if key is None else key
    data = pid.encode("utf-8", "surrogateescape")
    if key:
        digest = hmac.new(key.encode(), _SALT + data, hashlib.sha256).hexdigest()
    else:
        digest = hashlib.sha256(_SALT + data).hexdigest()
    return PREFIX + digest[:12]
