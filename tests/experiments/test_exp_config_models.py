import pytest
import torch
from torch import nn

import smoothtopk
from smoothtopk.experiments.config import Config, lr_at, resolve
from smoothtopk.experiments.losses import build_loss, loss_label
from smoothtopk.experiments.models import build_model


def test_resolution_order(tmp_path):
    cfg = resolve("cifar100-noise", {"epochs": 10, "lr": 0.05}, {"epochs": 3})
    assert (cfg.dataset, cfg.model, cfg.batch_size, cfg.milestones) == (
        "cifar100", "densenet-bc", 64, [150, 225]
    )  # fmt: skip
    assert cfg.epochs == 3 and cfg.lr == 0.05  # CLI > YAML > preset
    assert resolve(None, {"preset": "demo"}).preset == "demo"
    with pytest.raises(ValueError, match="disagree"):  # neither preset is silently dropped
        resolve("demo", {"preset": "cifar100-noise"})


def test_per_loss_settings_of_the_imagenet_preset():
    ce = resolve("imagenet-subsets", None, {"loss": "ce"})
    smooth = resolve("imagenet-subsets", None, {"loss": "smooth-svm"})
    assert (ce.lr, ce.weight_decay) == (0.1, 1e-4)
    assert (smooth.lr, smooth.tau, smooth.weight_decay) == (1.0, 0.1, 2.5e-5)
    assert resolve("imagenet-subsets", {"lr": 0.5}, {"loss": "smooth-svm"}).lr == 0.5


def test_defaults_are_the_demo_recipe():
    assert resolve(None).to_dict() | {"preset": "demo"} == resolve("demo").to_dict()
    assert resolve(None).model == "small-cnn"


def test_learning_rate_schedule():
    cfg = Config(lr=0.1, milestones=[150, 225], gamma=0.1)
    assert [round(lr_at(cfg, e), 6) for e in (0, 149, 150, 224, 225, 299)] == [
        0.1, 0.1, 0.01, 0.01, 0.001, 0.001
    ]  # fmt: skip


@pytest.mark.parametrize(
    "name, size, params", [("densenet-bc", 32, 1_941_620), ("resnet18-cifar", 32, None),
                           ("resnet18", 64, None), ("small-cnn", 16, None)]
)  # fmt: skip
def test_models(name, size, params):
    model = build_model(name, 100).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 100)
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params


def test_densenet_bc_structure():
    net = build_model("densenet-bc", 100)
    blocks = [m for n, m in net.features.named_children() if n.startswith("denseblock")]
    assert [len(b) for b in blocks] == [6, 6, 6]  # depth 40 = 3 * 6 * 2 + 4
    assert net.features.conv0.kernel_size == (3, 3) and net.features.conv0.stride == (1, 1)
    assert net.features.conv0.out_channels == 80  # 2 * growth rate 40
    assert isinstance(net.features.pool0, nn.Identity)
    cifar = build_model("resnet18-cifar", 10)
    assert cifar.conv1.stride == (1, 1) and isinstance(cifar.maxpool, nn.Identity)


def test_losses_by_name():
    scores, target = torch.randn(8, 20), torch.randint(0, 20, (8,))
    assert isinstance(build_loss("ce"), nn.CrossEntropyLoss)
    smooth = build_loss("smooth-svm", {"k": 5, "tau": 1.0, "alpha": 1.0})
    assert isinstance(smooth, smoothtopk.SmoothTopkSVMLoss)
    torch.testing.assert_close(
        smooth(scores, target), smoothtopk.smooth_topk_svm_loss(scores, target, k=5)
    )
    hard = build_loss("hard-svm", {"k": 3, "alpha": 1.0})
    assert isinstance(hard, smoothtopk.TopkSVMLoss)
    torch.testing.assert_close(hard(scores, target), smoothtopk.topk_svm_loss(scores, target, k=3))
    assert loss_label("smooth-svm", {"k": 5, "tau": 1.0, "alpha": 1.0}) == "L_{5,1} (alpha=1)"
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("focal")
