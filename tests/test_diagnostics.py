"""scripts/bn_statistics_check.py: batch norm on the test batch's statistics, running ones kept."""

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("bn_statistics_check", ROOT / "scripts" / "bn_statistics_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_batch_statistics_normalise_by_the_batch_and_keep_the_running_ones():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    bn = model[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(6, 3, 8, 8)
    kept = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    with torch.no_grad():
        as_evaluated = model(x)
        assert load_script().batch_statistics(model) == 1
        out = model(x)
        h = model[0](x)
    mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
    expected = (h - mean[:, None, None]) / torch.sqrt(var[:, None, None] + bn.eps) * bn.weight[:, None, None] \
        + bn.bias[:, None, None]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(as_evaluated, F.batch_norm(h, kept[0], kept[1], bn.weight, bn.bias, False, 0.0, bn.eps))
    assert torch.equal(bn.running_mean, kept[0]) and torch.equal(bn.running_var, kept[1])
