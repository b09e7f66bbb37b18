"""The verbs as plain functions — finetune, resume, inspect, evaluate, explain, export, predict,
compare — re-exported from their workflow modules (nfx/workflows/). The CLI, notebooks and
tests call these. Each takes a Printer (nfx.console) for everything the user sees.
"""

from __future__ import annotations

from nfx.records import MODEL_INFO, InputSpec, ModelInfo
from nfx.workflows.compare import CompareConfig, compare
from nfx.workflows.evaluate import evaluate
from nfx.workflows.explain import explain
from nfx.workflows.export import export
from nfx.workflows.finetune import RunResult, finetune, resume
from nfx.workflows.folds import FoldsResult, finetune_folds, is_folds_parent, resume_folds
from nfx.workflows.inspect import inspect
from nfx.workflows.loading import LoadedRun, load_run, predict_probs
from nfx.workflows.predict import predict

__all__ = ["MODEL_INFO", "CompareConfig", "FoldsResult", "InputSpec", "LoadedRun", "ModelInfo", "RunResult", "compare",
           "evaluate", "explain", "export", "finetune", "finetune_folds", "inspect", "is_folds_parent", "load_run",
           "predict", "predict_probs", "resume", "resume_folds"]
