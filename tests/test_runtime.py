"""The device layer: plain fp32 on CPU, and the mixed-precision path (exercised here with CPU bf16)."""

import torch

from imgtune.devices import Precision, prepare, to_device


def _one_step(precision, seen: list | None = None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 2, (8,))
    model(x)
    if seen is not None:  # the dtype the convolution computed in
        model[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with precision.autocast():
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    precision.step(loss, opt)
    return loss, model


def test_cpu_runs_plain_fp32_steps():
    p = Precision(torch.device("cpu"))
    assert p.dtype is None and not p.scaler.is_enabled()
    loss, model = _one_step(p)
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 2, (8,))
    ref(x)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(ref(x), y).backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))


def test_mixed_precision_path_trains():
    p = Precision(torch.device("cpu"), dtype=torch.bfloat16)
    seen = []
    before = _one_step(Precision(torch.device("cpu")))[1]
    loss, model = _one_step(p, seen)
    assert seen == [torch.bfloat16]  # the step really ran in bf16
    assert torch.isfinite(loss) and all(w.dtype == torch.float32 for w in model.parameters())  # fp32 master weights
    assert not torch.equal(model[0].weight, before[0].weight)  # and its gradients differ from fp32's


def test_image_batches_and_models_become_channels_last_with_the_same_outputs():
    x = torch.randn(2, 3, 8, 8)
    m = torch.nn.Conv2d(3, 4, 3)
    expected = m(x)
    xc = to_device(x, torch.device("cpu"))
    mc = prepare(m, torch.device("cpu"))
    assert xc.is_contiguous(memory_format=torch.channels_last)
    assert mc.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(mc(xc), expected, atol=1e-6)
    assert to_device(torch.randn(2, 5), torch.device("cpu")).is_contiguous()  # feature vectors as they are
