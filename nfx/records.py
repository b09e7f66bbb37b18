"""Typed records that cross modules: what a trained model is (`ModelInfo`) and how an image
becomes its input (`InputSpec`). Read and written here only — model.json in the run folder and
the metadata of an exported ONNX file — so no consumer parses either by string keys.

Pure: imports no torch, numpy, fastai or onnx.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfx.errors import RunError, short_reason
from nfx.runs import MODEL_INFO  # the run folder's file names live in nfx.runs

RESIZE_POLICIES = ("squish", "letterbox", "crop")
SCRATCH = "trained from scratch"  # ModelInfo.weights_source of a run with a random-init body
# said by finetune and MODEL.md for an NF architecture trained from scratch (docs/COMPARE.md, docs/LEARNING.md)
NF_FROM_SCRATCH_NOTE = ("measured from scratch on two real sets of a few hundred images (docs/COMPARE.md, "
                        "docs/RECIPES.md, docs/OOF.md): on brain MRI nf_regnet_b0 lost to a BatchNorm net of similar "
                        "cost (resnet18; with --bn frozen at micro-batch 1-2) by 0.05-0.13 accuracy and 0.07-0.13 ROC "
                        "AUC at every micro-batch from 1 to 32 and out of fold, and of the changes given to both "
                        "(augmentation, longer schedules, MixUp, CutMix, label smoothing, drop-path, SGD, EMA, an lr "
                        "range test) none lifted NF above it; on ELPV solar-cell images NF led out of fold on ROC AUC "
                        "(+0.04) at level accuracy. Started from weights pretrained on another real set, the two were "
                        "level on both sets. With no pretrained weights, run --arch resnet18 beside it (nfx compare), "
                        "or pass --weights")


BN_AT_BS1_DROP = "0.08-0.30"  # resnet18 from scratch, brain MRI and ELPV, docs/COMPARE.md
BN_AT_BS1_NOTE = ("measured on two real sets (docs/COMPARE.md): BatchNorm in train mode at micro-batch 1 lost "
                  "{drop} accuracy against the same net at micro-batch 32, under the same accumulation to an "
                  "effective batch of 32; pass --bn frozen (BatchNorm in eval mode), --bs 2 or more, or an NF net")


def check_policy(policy: str) -> str:
    """`policy` if it is a resize policy, else ValueError naming the valid ones (the one check)."""
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}; expected one of {RESIZE_POLICIES}")
    return policy


VOI_FALLBACKS = ("stored", "minmax", "percentile")  # nfx.data.dicom_values applies them
DEFAULT_VOI_FALLBACK = "minmax"  # of new runs; measured in docs/VOI_FALLBACK.md


def check_voi(rule: str) -> str:
    """`rule` if it is a VOI fallback rule, else ValueError naming the valid ones (the one check)."""
    if rule not in VOI_FALLBACKS:
        raise ValueError(f"unknown VOI fallback {rule!r}; expected one of {VOI_FALLBACKS}")
    return rule


def voi_of(recorded: str | None) -> str:
    """The VOI fallback rule from a recorded value; records made before the option: stored."""
    return check_voi(recorded or "stored")


def policy_of(recorded: str | None) -> str:
    """The resize policy from a recorded value. Runs made before the policy was an option
    recorded a sentence starting with 'letterbox' (or nothing, in ONNX files); they keep it."""
    if not recorded:
        return "letterbox"
    try:
        return check_policy(recorded.split()[0].strip().lower())
    except ValueError:
        raise ValueError(f"unknown resize policy {recorded!r}; expected one of {RESIZE_POLICIES}") from None


@dataclass(frozen=True)
class InputSpec:
    """decode (DICOM `frame`) → resize to size×size by `resize` → normalise by mean/std."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str  # no default: every record says its policy (old records are parsed by policy_of)
    frame: int | None = None
    voi: str = "stored"  # DICOM grayscale without VOI (nfx.data.dicom_values); old records: stored

    def __post_init__(self) -> None:
        check_policy(self.resize)
        check_voi(self.voi)

    def onnx_metadata(self) -> dict[str, str]:
        return {
            "nfx_input_size": str(self.size),
            "nfx_mean": json.dumps(list(self.mean)),
            "nfx_std": json.dumps(list(self.std)),
            "nfx_resize": self.resize,
            "nfx_frame": "" if self.frame is None else str(self.frame),
            "nfx_voi_fallback": self.voi,
        }

    @classmethod
    def from_onnx_metadata(cls, meta: dict[str, str]) -> InputSpec:
        """KeyError when a required key is missing (the caller names the file)."""
        return cls(size=int(meta["nfx_input_size"]), mean=tuple(json.loads(meta["nfx_mean"])),
                   std=tuple(json.loads(meta["nfx_std"])), resize=policy_of(meta.get("nfx_resize")),
                   frame=int(meta["nfx_frame"]) if meta.get("nfx_frame") else None,
                   voi=voi_of(meta.get("nfx_voi_fallback")))


@dataclass(frozen=True)
class ModelInfo:
    arch: str
    classes: tuple[str, ...]
    input: InputSpec
    weights_source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def from_scratch(self) -> bool:
        return self.weights_source == SCRATCH

    # -- model.json ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "arch": self.arch, "classes": list(self.classes), "num_classes": self.num_classes,
            "input_size": self.input.size, "mean": list(self.input.mean), "std": list(self.input.std),
            "weights_source": self.weights_source, "resize": self.input.resize, "frame": self.input.frame,
            "voi_fallback": self.input.voi,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelInfo:
        spec = InputSpec(size=int(d["input_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                         resize=policy_of(d.get("resize")), frame=d.get("frame"), voi=voi_of(d.get("voi_fallback")))
        return cls(arch=d["arch"], classes=tuple(d["classes"]), input=spec,
                   weights_source=d.get("weights_source", ""))

    def write(self, run_dir: Path) -> None:
        from nfx.runs import atomic_write_json

        atomic_write_json(Path(run_dir) / MODEL_INFO, self.to_json())

    @classmethod
    def read(cls, run_dir: Path) -> ModelInfo:
        p = Path(run_dir) / MODEL_INFO
        try:
            return cls.from_json(json.loads(p.read_text()))
        except FileNotFoundError:
            raise RunError(f"{p}: missing; is this a run folder made by `nfx finetune`?") from None
        except (ValueError, KeyError, TypeError) as e:
            raise RunError(f"{p}: unreadable ({short_reason(e, 120, with_type=True)}); restore it from a backup "
                           "or re-run training") from e

    # -- ONNX metadata -------------------------------------------------------------------
    def onnx_metadata(self) -> dict[str, str]:
        return {"nfx_classes": json.dumps(list(self.classes)), "nfx_arch": self.arch, **self.input.onnx_metadata()}

    @classmethod
    def from_onnx_metadata(cls, meta: dict[str, str]) -> ModelInfo:
        return cls(arch=meta.get("nfx_arch", ""), classes=tuple(json.loads(meta["nfx_classes"])),
                   input=InputSpec.from_onnx_metadata(meta), weights_source=meta.get("nfx_weights_source", ""))


def auto_agc_clip(effective_batch_size: int) -> float:
    """AGC clip factor λ for an effective batch size.

    Brock et al. (2021, Fig. 3 / Sec. 4.1) use λ = 0.01 at batch 4096 and report that smaller
    batches tolerate (and need) larger λ; fine-tuning reports put 0.04–0.16 at batches of
    32–256. We interpolate with λ = 0.01·sqrt(4096 / B), clamped to [0.01, 0.16]:
    B=4096 → 0.01, 256 → 0.04, 64 → 0.08, 32 → 0.113, ≤16 → 0.16.
    """
    b = max(1, int(effective_batch_size))
    return round(min(0.16, max(0.01, 0.01 * math.sqrt(4096 / b))), 4)
