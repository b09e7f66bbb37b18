"""Labels from a CSV (`--labels`): columns path, label[, patient][, split]; relative paths are
taken from the data folder (else the CSV's folder). Every row ends as an item or a bad row with
its reason; labels that disagree with the folders the files sit in are a note."""

from __future__ import annotations

import csv
from pathlib import Path

from nfx.data.layout import CSV_COLUMNS, SPLIT_VALUES, Item, is_supported, unsupported_reason
from nfx.errors import DataError


def from_csv(root: Path, csv_path: Path) -> tuple[list[Item], list[tuple[str, str]], bool, list[str]]:
    """Items from a labels CSV, the bad rows, whether it gives splits, and notes."""
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: labels file not found; pass a CSV with path,label[,patient][,split] columns")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{csv_path}: could not be read as CSV ({e}); save it as UTF-8 CSV") from e
    lower = {h.lower(): h for h in header}
    cols = {k: next((lower[a] for a in aliases if a in lower), None) for k, aliases in CSV_COLUMNS.items()}
    for need in ("path", "label"):
        if cols[need] is None:
            raise DataError(
                f"{csv_path}: no {need} column (found {header}); name the columns "
                f"{'/'.join(CSV_COLUMNS[need][:3])} and label, with optional patient and split"
            )
    base = root if root.is_dir() else csv_path.parent
    items: list[Item] = []
    bad: list[tuple[str, str]] = []
    seen: dict[Path, int] = {}
    user_splits = False
    for n, row in enumerate(rows, start=2):  # row 1 is the header
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        raw = row.get(cols["path"], "")
        if not raw:
            raise DataError(f"{csv_path}: row {n} has an empty {cols['path']!r}; fill it or delete the row")
        p = Path(raw)
        if not p.is_absolute():
            p = base / raw
            if not p.exists() and (csv_path.parent / raw).exists():
                p = csv_path.parent / raw
        label = row.get(cols["label"], "")
        split = None
        if cols["split"] and row.get(cols["split"]):
            value = row[cols["split"]].lower()
            if value not in SPLIT_VALUES:
                raise DataError(f"{csv_path}: row {n}: split {row[cols['split']]!r} is not train, valid or test; fix it")
            split = SPLIT_VALUES[value]
            user_splits = True
        pid = (row.get(cols["patient"]) or None) if cols["patient"] else None
        key = p.resolve()
        if key in seen:
            bad.append((str(p), f"listed twice in {csv_path.name} (rows {seen[key]} and {n}); keep one row"))
            continue
        seen[key] = n
        if not label:
            bad.append((str(p), f"no label in {csv_path.name} row {n}; fill it in"))
        elif not p.is_file():
            bad.append((str(p), f"listed in {csv_path.name} row {n} but not found; fix the path"))
        elif not is_supported(p):
            bad.append((str(p), unsupported_reason(p)))
        else:
            items.append((p, label, split, pid))
    return items, bad, user_splits, _folder_disagreements(items, base, csv_path)


def _folder_disagreements(items: list[Item], base: Path, csv_path: Path) -> list[str]:
    """A CSV label that differs from the label folder the file sits in (a folder named like one
    of the CSV's labels) is worth a warning: one of the two is wrong. The CSV wins."""
    labels = {label for _, label, _, _ in items}
    differ = []
    for p, label, _, _ in items:
        folder = p.parent.name
        if folder in labels and folder != label:
            differ.append((p, label, folder))
    if not differ:
        return []
    p, label, folder = differ[0]
    return [f"{csv_path}: {len(differ)} file(s) are labelled differently from the label folder they are in "
            f"(first: {p}: {label!r} in folder {folder!r}); the CSV's label is used — check which one is right"]
