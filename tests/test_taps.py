"""Taps: capture by path, selection, clear errors, hook removal, and real partial execution."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featdistill.taps import TapPathError, Taps, TapSpec, resolve_module


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.layer3 = nn.Linear(8, 3)
        self.calls: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append("layer1")
        x = self.layer1(x)
        self.calls.append("layer2")
        x = self.layer2(x)
        self.calls.append("layer3")
        return self.layer3(x)


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(4, 4)

    def forward(self, x):
        return self.block(x), {"hidden": x * 2}


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = TupleOut()

    def forward(self, x):
        out, extra = self.enc(x)
        return out + extra["hidden"]


def test_captures_outputs_inputs_and_logits():
    net = Net()
    x = torch.randn(5, 4)
    with Taps(net, {"a": "layer1", "b_in": TapSpec("layer3", kind="input"), "logits": ""}) as taps:
        out, feats = taps(x)
    ref1 = net.layer1(x)
    assert torch.allclose(feats["a"], ref1)
    assert torch.allclose(feats["b_in"], net.layer2(ref1))
    assert torch.equal(feats["logits"], out)


def test_hooks_removed_on_close():
    net = Net()
    with Taps(net, {"a": "layer1"}):
        assert len(net.layer1._forward_hooks) == 1
    assert len(net.layer1._forward_hooks) == 0


def test_unknown_path_lists_closest():
    with pytest.raises(TapPathError) as err:
        Taps(Net(), {"a": "layer_2"})
    msg = str(err.value)
    assert "layer_2" in msg and "'layer2'" in msg and "featdistill inspect" in msg


def test_select_from_tuple_and_dict():
    m = Wrapper()
    x = torch.randn(2, 4)
    with Taps(m, {"first": TapSpec("enc", select=0), "hidden": TapSpec("enc", select=1)}) as taps:
        # select=1 gives a dict: selecting further is not possible, so a clear TypeError names it
        with pytest.raises(TypeError, match="select"):
            taps(x)
    with Taps(m, {"first": TapSpec("enc", select=0)}) as taps:
        _, feats = taps(x)
    assert torch.allclose(feats["first"], m.enc.block(x))


def test_partial_execution_stops_after_last_tap():
    net = Net()
    with Taps(net, {"mid": "layer2"}, stop_early=True) as taps:
        out, feats = taps(torch.randn(3, 4))
    assert out is None
    assert feats["mid"].shape == (3, 8)
    assert net.calls == ["layer1", "layer2"]  # layer3 never ran


def test_module_called_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.act(x) - 1)

    with Taps(Twice(), {"a": "act"}) as taps, pytest.raises(RuntimeError, match="more than once"):
        taps(torch.randn(2, 2))


def test_resolve_module_root_and_nested():
    net = Net()
    assert resolve_module(net, "") is net
    assert resolve_module(net, "layer1.0") is net.layer1[0]


def test_hf_style_model_output_by_key():
    class Out(dict):
        pass

    class Layer(nn.Module):
        def forward(self, x):
            return Out(last_hidden_state=x + 1, attn=x)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = Layer()

        def forward(self, x):
            return self.layer(x)["last_hidden_state"]

    with Taps(M(), {"h": TapSpec("layer", select="last_hidden_state")}) as taps:
        _, feats = taps(torch.zeros(1, 2))
    assert torch.equal(feats["h"], torch.ones(1, 2))


def test_direct_calls_outside_taps_are_not_captured():
    net = Net()
    with Taps(net, {"a": "layer1"}, stop_early=True) as taps:
        out = net(torch.randn(2, 4))  # a plain call runs the whole model and records nothing
        assert out.shape == (2, 3)
        net(torch.randn(2, 4))
        _, feats = taps(torch.randn(2, 4))
    assert feats["a"].shape == (2, 8)


def test_hugging_face_model_built_from_config():
    """Tap a transformers model (no download: built from a config) by path, selecting from tuple outputs."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 50, (2, 7))
    with Taps(model, {"l0": TapSpec("encoder.layer.0", select=0), "emb": "embeddings"}) as taps:
        out, feats = taps(input_ids=ids, output_hidden_states=True)
    assert feats["l0"].shape == (2, 7, 16)
    assert torch.allclose(feats["l0"], out.hidden_states[1], atol=1e-6)
    assert torch.allclose(feats["emb"], out.hidden_states[0], atol=1e-6)
    with pytest.raises(TapPathError, match="encoder.layer.1"):
        Taps(model, {"x": "encoder.layer.7"})
