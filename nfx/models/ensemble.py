"""The fold ensemble of a --folds parent as one torch module (exported to ONNX like one model)."""

from __future__ import annotations

import torch


class FoldEnsemble(torch.nn.Module):
    """Mean of the K fold models' softmax outputs, returned as its logarithm: everything that
    applies a softmax to a model's output (nfx's torch and ONNX prediction paths) then gets the
    mean probabilities exactly, since softmax(log p) = p when p sums to 1."""

    def __init__(self, models: list[torch.nn.Module]):
        super().__init__()
        self.folds = torch.nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(dim=1) for m in self.folds]).mean(dim=0)
        return probs.clamp_min(1e-30).log()
