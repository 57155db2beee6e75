"""fastrnn.converters.nam: .nam files made from torch modules, against torch with the same start
state, whole and sample by sample."""

import json

import numpy as np
import pytest
import torch

import fastrnn
from fastrnn.converters.nam import expected_weight_count

TOLERANCE = 3e-5


def nam_file(lstm, head, h0, c0, version="0.5.4"):
    """The .nam JSON of torch's LSTM and Linear head with start state (h0, c0) (L, H), laid out
    as Neural Amp Modeler's exporter writes it: per layer [W_ih | W_hh] row-major, the summed
    bias, h0, c0; then the head's weight and bias."""
    flat = []
    for layer in range(lstm.num_layers):
        w = torch.cat([getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")],
                      dim=1)
        b = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
        flat += [w.flatten(), b, h0[layer], c0[layer]]
    flat += [head.weight.flatten(), head.bias]
    weights = torch.cat([t.detach().double() for t in flat]).tolist()
    return {"version": version, "architecture": "LSTM",
            "config": {"input_size": lstm.input_size, "hidden_size": lstm.hidden_size,
                       "num_layers": lstm.num_layers},
            "weights": weights, "sample_rate": 48000, "metadata": {"loudness": -18.0}}


def torch_model(num_layers, hidden_size=8, seed=0):
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(1, hidden_size, num_layers=num_layers, batch_first=True)
    head = torch.nn.Linear(hidden_size, 1)
    h0 = 0.5 * torch.randn(num_layers, hidden_size)
    c0 = torch.randn(num_layers, hidden_size)
    return lstm, head, h0, c0


def run_torch(lstm, head, h0, c0, x):
    """x (B, T, 1) from the start state (h0, c0) given to every row -> (B, T, 1)."""
    batch = x.shape[0]
    state = (h0[:, None].repeat(1, batch, 1).contiguous(),
             c0[:, None].repeat(1, batch, 1).contiguous())
    with torch.no_grad():
        return head(lstm(torch.from_numpy(x), state)[0]).numpy()


@pytest.mark.parametrize("num_layers", [1, 2])
def test_nam_file_matches_torch_whole_and_streamed(num_layers, tmp_path, rng):
    lstm, head, h0, c0 = torch_model(num_layers)
    path = tmp_path / "amp.nam"
    path.write_text(json.dumps(nam_file(lstm, head, h0, c0)))
    chain = fastrnn.from_nam(path)
    assert chain.input_layout == "BTC" and chain.out_features == 1
    assert chain.nam["sample_rate"] == 48000 and chain.nam["metadata"] == {"loudness": -18.0}

    x = (0.3 * rng.standard_normal((2, 40, 1))).astype(np.float32)
    expected = run_torch(lstm, head, h0, c0, x)
    whole = chain(x)
    np.testing.assert_allclose(whole, expected, rtol=0, atol=TOLERANCE)
    # The start state matters: from zeros the first outputs differ by far more than the tolerance.
    zero_start = run_torch(lstm, head, torch.zeros_like(h0), torch.zeros_like(c0), x)
    assert np.abs(zero_start[:, :5] - expected[:, :5]).max() > 100 * TOLERANCE

    stream = chain.stream(batch=2)
    steps = np.stack([stream.step(x[:, t]) for t in range(x.shape[1])], axis=1)
    np.testing.assert_allclose(steps, expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(steps, whole, rtol=0, atol=1e-6)

    stream.reset()   # back to the file's start state, not to zeros
    chunked = np.concatenate([stream.process(x[:, :7]), stream.process(x[:, 7:])], axis=1)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)


def test_one_row_stream_takes_one_sample_a_step(rng):
    lstm, head, h0, c0 = torch_model(1, hidden_size=6, seed=3)
    chain = fastrnn.from_nam(nam_file(lstm, head, h0, c0))   # the parsed JSON, a dict
    x = (0.3 * rng.standard_normal((1, 12, 1))).astype(np.float32)
    expected = run_torch(lstm, head, h0, c0, x)[0, :, 0]
    stream = chain.stream()
    got = [stream.step(np.array([sample]))[0] for sample in x[0, :, 0]]
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


def test_nam_float64_matches_torch_double(rng):
    lstm, head, h0, c0 = torch_model(2, hidden_size=5, seed=4)
    lstm, head = lstm.double(), head.double()
    chain = fastrnn.from_nam(nam_file(lstm, head, h0, c0), dtype=np.float64)
    x = rng.standard_normal((1, 20, 1))
    expected = run_torch(lstm, head, h0.double(), c0.double(), x)
    np.testing.assert_allclose(chain(x), expected, rtol=0, atol=1e-9)


def test_weight_count_formula():
    # 1 layer, H = 16: 4*16*(1+16) + 4*16 + 2*16 + 16 + 1 (head)
    assert expected_weight_count(1, 16, 1) == 1088 + 64 + 32 + 17
    lstm, head, h0, c0 = torch_model(2, hidden_size=3)
    assert len(nam_file(lstm, head, h0, c0)["weights"]) == expected_weight_count(1, 3, 2)


def test_malformed_and_other_files_are_refused(tmp_path):
    lstm, head, h0, c0 = torch_model(1, hidden_size=4)
    good = nam_file(lstm, head, h0, c0)
    for architecture in ("WaveNet", "ConvNet", "Linear"):
        with pytest.raises(ValueError, match=f"architecture is '{architecture}'.*LSTM"):
            fastrnn.from_nam({**good, "architecture": architecture})
    expected = expected_weight_count(1, 4, 1)
    with pytest.raises(ValueError, match=f"hold {expected - 1} numbers.*has {expected}"):
        fastrnn.from_nam({**good, "weights": good["weights"][:-1]})
    with pytest.raises(ValueError, match="config.hidden_size must be a positive integer"):
        fastrnn.from_nam({**good, "config": {**good["config"], "hidden_size": 0}})
    with pytest.raises(ValueError, match="version 0.4.0; fastrnn reads version 0.5.x"):
        fastrnn.from_nam({**good, "version": "0.4.0"})
    with pytest.raises(ValueError, match="'major.minor.patch' string"):
        fastrnn.from_nam({key: value for key, value in good.items() if key != "version"})
    with pytest.raises(ValueError, match="flat list of numbers"):
        fastrnn.from_nam({**good, "weights": ["a"] * expected})
    path = tmp_path / "broken.nam"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a .nam file: not JSON"):
        fastrnn.from_nam(path)
    with pytest.raises(TypeError, match="path or its parsed JSON"):
        fastrnn.from_nam(42)


def test_cli_info_describes_a_nam_file_and_convert_writes_it(tmp_path, capsys):
    from fastrnn.cli import main
    lstm, head, h0, c0 = torch_model(1, hidden_size=4)
    path = tmp_path / "amp.nam"
    path.write_text(json.dumps(nam_file(lstm, head, h0, c0)))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "version 0.5.4, sample rate 48000" in out and "hidden_size=4" in out
    assert "streams:    yes" in out
    assert main(["convert", str(path)]) == 0   # the chain's file (tests/test_cli.py tests more)
    assert "wrote " in capsys.readouterr().out
    assert fastrnn.load(path.with_suffix(".fastrnn")).fingerprint() == \
        fastrnn.from_nam(path).fingerprint()
