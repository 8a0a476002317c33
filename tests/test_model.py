"""The network and its size arithmetic: the paper's numbers, the config, He initialisation, and property
tests that every size the arithmetic promises is what a real forward pass produces."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from unet import InputContract, UNet, UNetConfig, UNetError, predict_image

KINDS = [(p, u) for p in ("valid", "same") for u in ("transpose", "upsample_conv")]


@pytest.fixture(scope="module")
def paper_net() -> UNet:
    torch.manual_seed(0)
    return UNet().eval()


def _tiny(depth: int, padding: str, upsampling: str, base_channels: int = 1) -> UNet:
    torch.manual_seed(depth)
    return UNet(depth=depth, base_channels=base_channels, padding=padding, upsampling=upsampling).eval()


# -- the paper's network ---------------------------------------------------------------------------
def test_paper_network_has_31_030_658_parameters(paper_net):
    assert sum(p.numel() for p in paper_net.parameters()) == 31_030_658


def test_paper_network_maps_572_to_388(paper_net):
    with torch.no_grad():
        out = paper_net(torch.randn(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)
    assert torch.isfinite(out).all()
    assert paper_net.output_size(572) == 388 and paper_net.input_size(388) == 572


def test_paper_network_margin_is_92(paper_net):
    assert paper_net.margin == 92
    assert paper_net.margins == (92, 92)
    assert paper_net.pooling_period == 16


# -- config ----------------------------------------------------------------------------------------
CONFIGS = [
    UNetConfig(),
    UNetConfig(in_channels=3, num_classes=5, depth=3, base_channels=7, padding="same",
               upsampling="upsample_conv", batch_norm=True, dropout=0.25,
               input=InputContract(channels=3, dtype="uint16", value_range=(0.0, 65535.0),
                                   offset=(100.0, 200.0, 300.0), scale=(10.0, 20.0, 30.5))),
    UNetConfig(in_channels=2, input=InputContract(channels=2, offset=(0.5,), scale=(2.0,))),
]


def test_config_is_frozen():
    config = UNet(depth=2, base_channels=1).config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.depth = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.input.offset = (1.0,)


@pytest.mark.parametrize("config", CONFIGS)
def test_config_round_trips_through_dict_and_json(config):
    assert UNetConfig.from_dict(config.to_dict()) == config
    assert UNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert UNet(config).config == config


@pytest.mark.parametrize("where", ["top", "input"])
def test_config_refuses_unknown_keys(where):
    data = UNetConfig().to_dict()
    (data if where == "top" else data["input"])["colour"] = "blue"
    with pytest.raises(ValueError, match="colour"):
        UNetConfig.from_dict(data)


@pytest.mark.parametrize("bad", [dict(depth=1), dict(num_classes=1), dict(padding="full"),
                                 dict(upsampling="bilinear"), dict(dropout=1.0), dict(in_channels=0),
                                 dict(in_channels=3)])  # 3 network channels, 1 contract channel
def test_config_refuses_bad_values(bad):
    with pytest.raises(ValueError, match="expected|contract"):
        UNetConfig(**bad)


# -- initialisation and layers ---------------------------------------------------------------------
def test_he_initialisation(paper_net):
    convs = [m for m in paper_net.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 10_000]
    assert len(convs) >= 15
    for conv in convs:
        w = conv.weight.detach()
        fan_in = w[0].numel()
        expected = math.sqrt(2.0 / fan_in)
        tol = 5 * expected / math.sqrt(2 * w.numel()) + 1e-3 * expected  # ~5 standard errors
        assert abs(w.std().item() - expected) < tol, (conv, w.std().item(), expected)
        assert abs(w.mean().item()) < 5 * expected / math.sqrt(w.numel())
        assert conv.bias is None or torch.all(conv.bias == 0)
    biggest = max(convs, key=lambda c: c.weight.numel())  # 1024 x 1024 x 3 x 3 at the bottom
    assert biggest.weight.numel() > 4_000_000
    assert biggest.weight.std().item() == pytest.approx(math.sqrt(2 / (1024 * 9)), rel=0.01)
    for up in (m for m in paper_net.modules() if isinstance(m, nn.ConvTranspose2d)):  # 1 input tap each
        assert up.weight.std().item() == pytest.approx(math.sqrt(2 / up.in_channels), rel=0.05)


def test_dropout_only_at_the_bottom_and_only_when_set():
    def dropouts(model):
        return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]

    assert dropouts(UNet(depth=3, base_channels=2)) == []
    model = UNet(depth=3, base_channels=2, dropout=0.5)
    assert dropouts(model) == [model.dropout]
    assert isinstance(model.dropout, nn.Dropout2d) and model.dropout.p == 0.5
    seen = []
    model.dropout.register_forward_hook(lambda m, i, o: seen.append((i[0].shape, (o == 0).all((2, 3)))))
    model.train()
    model(torch.randn(1, 1, 60, 76))
    (shape, zeroed), = seen
    assert shape == (1, 8, 8, 12)  # deepest level: 4 x base channels, 60 -> 8, 76 -> 12
    assert zeroed.any() and not zeroed.all()  # whole channels dropped, not single pixels


def test_batch_norm_follows_every_conv():
    model = UNet(depth=3, base_channels=2, batch_norm=True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(norms) == 10 and all(c.bias is None for c in convs)


@pytest.mark.parametrize("upsampling", ["transpose", "upsample_conv"])
@pytest.mark.parametrize("depth", [2, 3, 5])
def test_same_padding_keeps_size_on_grid_multiples(depth, upsampling):
    model = _tiny(depth, "same", upsampling, base_channels=2)
    g = model.pooling_period
    for h, w in [(g, 3 * g), (5 * g, 7 * g), (9 * g, g)]:
        with torch.no_grad():
            assert model(torch.randn(1, 1, h, w)).shape == (1, 2, h, w)
        assert model.output_size(h) == h and model.margins == (0, 0)


@pytest.mark.parametrize("upsampling", ["transpose", "upsample_conv"])
def test_both_upsampling_kinds_build_the_paper_layers(upsampling):
    model = UNet(depth=3, base_channels=4, upsampling=upsampling)
    transposed = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    upsamples = [m for m in model.modules() if isinstance(m, nn.Upsample)]
    two_by_two = [m for m in model.modules() if type(m) is nn.Conv2d and m.kernel_size == (2, 2)]
    if upsampling == "transpose":
        assert len(transposed) == 2 and not upsamples and not two_by_two
        assert all(m.stride == (2, 2) and m.kernel_size == (2, 2) for m in transposed)
    else:
        assert not transposed and len(upsamples) == len(two_by_two) == 2
        assert all(m.padding == (0, 0) for m in two_by_two)  # unpadded in valid mode
    assert [m.out_channels for m in transposed + two_by_two] == ([8, 4])


# -- size arithmetic: property tests against the real network ---------------------------------------
def _really_valid(model: UNet, n: int, across: int) -> tuple[bool, int | None]:
    """Run the network on an (n, across) input; valid when every pooling sees an even size (nothing is
    floored away) and an output remains. Returns (valid, output rows)."""
    odd = []
    hooks = [m.register_forward_pre_hook(lambda m, i: odd.append(i[0].shape[-2] % 2))
             for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 1, n, across))
    except RuntimeError:  # a size dropped below 1 somewhere
        return False, None
    finally:
        for h in hooks:
            h.remove()
    return not any(odd) and out.shape[-2] >= 1, out.shape[-2]


@pytest.mark.parametrize("padding,upsampling", KINDS)
@pytest.mark.parametrize("depth", [2, 3, 4, 5, 6])
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_size_arithmetic_matches_the_real_network(depth, padding, upsampling, data):
    model = _tiny(depth, padding, upsampling)
    across = model.round_input_size(1, "up")  # the smallest valid size, for the other axis
    lo = model.round_input_size(1, "up")
    n = data.draw(st.integers(1, lo + 12 * model.pooling_period), label="n")
    valid, rows = _really_valid(model, n, across)
    if valid:
        assert model.output_size(n) == rows
        assert model.input_size(rows) == n
        before, after = model.margins
        assert before + after == n - rows
        assert model.round_input_size(n, "down") == model.round_input_size(n, "up") == n
        assert n in model.valid_input_sizes(n - 3, n + 3)
    else:
        with pytest.raises(ValueError) as err:
            model.output_size(n)
        below, above = re.search(r"nearest valid sizes: (\w+) and (\d+)", str(err.value)).groups()
        above = int(above)
        assert above > n and _really_valid(model, above, across)[0]
        if below == "none":
            assert n < lo
            start = 1
        else:
            below = int(below)
            assert below < n and _really_valid(model, below, across)[0]
            start = below + 1
        between = range(start, above)
        assert not model.valid_input_sizes(start, above - 1)
        sample = sorted({start, n, above - 1, *data.draw(st.lists(st.sampled_from(between), max_size=2))})
        assert not any(_really_valid(model, m, across)[0] for m in sample)


@pytest.mark.parametrize("padding,upsampling", KINDS)
@pytest.mark.parametrize("depth", [2, 4, 6])
def test_valid_sizes_step_by_the_grid(depth, padding, upsampling):
    model = _tiny(depth, padding, upsampling)
    sizes = model.valid_input_sizes(1, 3000)
    assert sizes[0] == model.round_input_size(1, "up")
    assert set(sizes[i + 1] - sizes[i] for i in range(len(sizes) - 1)) == {model.pooling_period}
    for n in sizes[:5] + sizes[-3:]:
        assert model.input_size(model.output_size(n)) == n
        assert sum(model.margins) == n - model.output_size(n)


@pytest.mark.parametrize("padding,upsampling", KINDS)
@pytest.mark.parametrize("depth", [2, 3, 5])
def test_input_size_refuses_unproducible_outputs(depth, padding, upsampling):
    model = _tiny(depth, padding, upsampling)
    outputs = [model.output_size(n) for n in model.valid_input_sizes(1, 1500)]
    for n in range(1, outputs[3]):
        if n in outputs:
            assert model.output_size(model.input_size(n)) == n
        else:
            with pytest.raises(ValueError, match="nearest producible"):
                model.input_size(n)


@pytest.mark.parametrize("upsampling", ["transpose", "upsample_conv"])
@pytest.mark.parametrize("depth", [2, 3, 5])
def test_margin_before_is_where_the_output_is_centred(depth, upsampling):
    """Output pixel i must look at input pixel i + margin: the centre of mass of its sensitivity, in a
    linear stand-in (average pooling, constant positive weights), sits there (half a pixel later with the
    2x2 up-convolution, whose margins differ by one), averaged over one period of the pooling grid."""
    model = _tiny(depth, "valid", upsampling).double()
    for down in model.downs:
        down[0] = nn.AvgPool2d(2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    n = model.round_input_size(1, "up") + 2 * model.pooling_period
    across = model.round_input_size(1, "up")
    offsets = []
    for i in range(model.pooling_period):
        x = torch.ones(1, 1, n, across, dtype=torch.double, requires_grad=True)
        model(x)[0, 0, i, 0].backward()
        weight = x.grad[0, 0].sum(1)                           # (n,) sensitivity per input row
        offsets.append((weight * torch.arange(n)).sum().item() / weight.sum().item() - i)
    centre = sum(offsets) / len(offsets)
    before, after = model.margins
    assert centre == pytest.approx((before + after) / 2, abs=0.02)
    assert max(abs(o - centre) for o in offsets) < 0.25
    assert before == math.floor(centre + 0.02) and after - before in (0, 1)


def test_bad_network_and_bad_tile_raise_the_same_error_root():
    """One root for every user-facing validation error: the network's config and the tile loop alike."""
    with pytest.raises(UNetError, match="depth between 2 and 8, found 9"):
        UNet(depth=9)
    with pytest.raises(UNetError, match="tile: 7 px is not a valid input size"):
        predict_image(UNet(depth=2, base_channels=1), np.zeros((20, 20), np.float32), tile=7)
