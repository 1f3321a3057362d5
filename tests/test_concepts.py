"""docs/concepts.md is executed here, and its formulas are checked against the real code beyond its examples.

The doc's doctest examples define ``conv_output_size``, ``mlp_param_count``, ``huber`` and ``adam_step``;
the tests below take those very functions from the executed doc, so the page and the code cannot drift.
"""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dlexp.models.mlp import MLP
from dlexp.training.losses import ClassificationLoss

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = ROOT / "docs" / "concepts.md"


@pytest.fixture(scope="module")
def doc_globals() -> dict:
    """Run every example in docs/concepts.md; return the names its examples defined."""
    text = CONCEPTS.read_text(encoding="utf-8")
    test = doctest.DocTestParser().get_doctest(text, {}, CONCEPTS.name, str(CONCEPTS), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    runner.run(test, out=report.append, clear_globs=False)
    assert runner.failures == 0, "".join(report)
    assert runner.tries >= 30, f"only {runner.tries} examples ran; did the doc lose its examples?"
    return test.globs


def test_concepts_doc_examples_pass(doc_globals):
    for name in ("conv_output_size", "mlp_param_count", "huber", "adam_step"):
        assert callable(doc_globals[name]), name


@pytest.mark.parametrize("size", [7, 30, 40, 64])
@pytest.mark.parametrize(("kernel", "stride", "padding"), [(1, 1, 0), (3, 1, 0), (3, 1, 1), (2, 2, 0),
                                                           (5, 2, 2), (4, 3, 1), (7, 1, 3)])
def test_conv_formula_in_doc_matches_conv2d(doc_globals, size, kernel, stride, padding):
    conv = torch.nn.Conv2d(2, 4, kernel_size=(kernel, 1), stride=(stride, 1), padding=(padding, 0))
    height = conv(torch.zeros(1, 2, size, 9)).shape[2]
    assert height == doc_globals["conv_output_size"](size, kernel, stride, padding)


def test_conv_5_filters_kernel_3x2_forward_shape():
    conv = torch.nn.Conv2d(1, 5, kernel_size=(3, 2), stride=1, padding=0)
    assert conv(torch.zeros(1, 1, 30, 40)).shape == (1, 5, 28, 39)
    assert sum(p.numel() for p in conv.parameters()) == 35


@pytest.mark.parametrize("widths", [[2, 64, 32, 5], [2, 5, 5], [784, 128, 64, 10], [3, 7, 7, 7, 2],
                                    [10, 1, 3]])
def test_mlp_formula_in_doc_matches_torch(doc_globals, widths):
    model = MLP(input_shape=(widths[0],), num_classes=widths[-1], hidden_dims=widths[1:-1])
    assert sum(p.numel() for p in model.parameters()) == doc_globals["mlp_param_count"](widths)


def test_spiral_mlp_has_2437_parameters(doc_globals):
    # The "2,405" is 32 short; 2·64+64 + 64·32+32 + 32·5+5 = 2,437 (see docs/concepts.md).
    assert doc_globals["mlp_param_count"]([2, 64, 32, 5]) == 2437
    assert sum(p.numel() for p in MLP((2,), 5, [64, 32]).parameters()) == 2437


OUTPUTS, TARGETS = [0.1, 4.4, 0.2, 10.0], [1.0, 4.0, 5.0, 8.0]


def test_huber_loss_exact_value(doc_globals):
    assert doc_globals["huber"](OUTPUTS, TARGETS) == pytest.approx(1.57125, abs=1e-12)
    configured = instantiate(OmegaConf.load(ROOT / "conf" / "loss" / "huber.yaml"))
    value = configured.criterion(torch.tensor(OUTPUTS, dtype=torch.float64), torch.tensor(TARGETS,
                                                                                         dtype=torch.float64))
    assert value.item() == pytest.approx(1.57125, abs=1e-12)


@pytest.mark.parametrize("delta", [0.5, 1.0, 3.0])
def test_huber_formula_in_doc_matches_torch(doc_globals, delta):
    outputs = torch.randn(50, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    targets = torch.zeros(50, dtype=torch.float64)
    expected = torch.nn.HuberLoss(delta=delta)(outputs, targets).item()
    by_formula = doc_globals["huber"](outputs.tolist(), targets.tolist(), delta)
    assert by_formula == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["huber", "mse", "smooth_l1"])
def test_regression_losses_compare_probabilities_with_one_hot_targets(name):
    loss = instantiate(OmegaConf.load(ROOT / "conf" / "loss" / f"{name}.yaml"))
    assert isinstance(loss, ClassificationLoss)
    logits = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    one_hot = torch.eye(4)[labels]
    assert loss(logits, labels).item() == pytest.approx(loss.criterion(logits.softmax(dim=1), one_hot).item())


def test_nll_config_equals_cross_entropy():
    nll = instantiate(OmegaConf.load(ROOT / "conf" / "loss" / "nll.yaml"))
    logits = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert nll(logits, labels).item() == pytest.approx(expected)


@pytest.mark.parametrize(("lr", "betas", "eps"), [(0.001, (0.9, 0.999), 1e-8), (0.1, (0.5, 0.9), 1e-3),
                                                  (0.01, (0.0, 0.99), 1e-8)])
def test_adam_steps_from_doc_formula_equal_torch_adam(doc_globals, lr, betas, eps):
    adam_step = doc_globals["adam_step"]
    generator = torch.Generator().manual_seed(3)
    start = torch.randn(6, generator=generator, dtype=torch.float64)
    w = start.clone().requires_grad_(True)
    adam = torch.optim.Adam([w], lr=lr, betas=betas, eps=eps)
    theta, m, v = start.tolist(), [0.0] * 6, [0.0] * 6
    for t in range(1, 6):
        grad = torch.randn(6, generator=generator, dtype=torch.float64) * 10 ** (t - 3)  # scales 0.01..100
        w.grad = grad.clone()
        adam.step()
        theta, m, v = adam_step(theta, grad.tolist(), m, v, t, lr=lr, betas=betas, eps=eps)
        assert w.detach().tolist() == pytest.approx(theta, rel=1e-12, abs=1e-12), f"step {t}"
    assert adam.state[w]["exp_avg"].tolist() == pytest.approx(m, rel=1e-12)
    assert adam.state[w]["exp_avg_sq"].tolist() == pytest.approx(v, rel=1e-12)
