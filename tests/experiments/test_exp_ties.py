"""Evaluation shares ties (issue #11 item 6): a collapsed model scores chance, not 100 %."""

import torch
from torch import nn

from smoothtopk.experiments.train import evaluate


class Constant(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        return torch.zeros(x.shape[0], self.classes)


def test_a_constant_model_scores_chance_in_evaluation():
    data = torch.utils.data.TensorDataset(torch.randn(30, 3), torch.randint(0, 100, (30,)))
    loader = torch.utils.data.DataLoader(data, batch_size=7)
    result = evaluate(Constant(100), loader, torch.device("cpu"), (1, 5))
    assert result["top1"] == 1 / 100 and result["top5"] == 5 / 100
    assert result["correct"] == [30 / 100, 30 * 5 / 100] and result["total"] == 30
