"""fastrnn.Chain: whole torch models (Sequential and traced forwards) against torch, streamed."""

import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn as nn

import fastrnn
from fastrnn.layers import Activation, Conv1d, Linear, Recurrent


class KeywordSpotter(nn.Module):
    """A keyword spotter / VAD: causal conv front end -> permute -> batch_first GRU -> Linear ->
    Sigmoid. The causal conv is written the usual way: pad both sides, drop the look-ahead."""

    def __init__(self, features=4, channels=8, hidden=6, classes=2):
        super().__init__()
        self.conv = nn.Conv1d(features, channels, 3, padding=2)
        self.front = nn.Sequential(
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.ConstantPad1d((4, 0), 0.0),
            nn.Conv1d(channels, channels, 3, dilation=2, groups=2),
            nn.GELU(),
            nn.Dropout(0.1),
        )
        self.gru = nn.GRU(channels, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)
        self.out = nn.Sigmoid()

    def forward(self, x):                     # x (B, C, T)
        y = self.front(self.conv(x)[..., :-2])
        y = y.permute(0, 2, 1)                # (B, T, C) for the batch_first GRU
        y, _ = self.gru(y)
        return self.out(self.head(y))         # (B, T, classes)


class TimeMajorLstm(nn.Module):
    """Conv front end -> transpose to (T, B, C) -> a time-major LSTM -> Linear, output (T, B, C)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 5, 2, padding=1)
        self.lstm = nn.LSTM(5, 4, num_layers=2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = torch.tanh(self.conv(x)[:, :, :-1])
        y = y.permute(2, 0, 1).contiguous()
        return self.head(self.lstm(y)[0])


def with_statistics(module, seed):
    torch.manual_seed(seed)
    for sub in module.modules():
        if isinstance(sub, nn.BatchNorm1d):
            with torch.no_grad():
                sub.running_mean.normal_()
                sub.running_var.uniform_(0.5, 2.0)
    return module.eval()


def torch_dtype(dtype):
    return torch.float64 if dtype == np.float64 else torch.float32


@pytest.fixture(scope="module")
def spotters():
    torch.manual_seed(11)
    spotter = with_statistics(KeywordSpotter(), 12)
    return {np.dtype(np.float32): spotter, np.dtype(np.float64): with_statistics(
        KeywordSpotter(), 12).double().eval()}


def test_keyword_spotter_matches_torch(spotters, dtype, tolerance, rng):
    module = spotters[dtype]
    if dtype == np.float64:
        module.load_state_dict({k: v.double() for k, v in spotters[np.dtype(np.float32)]
                                .state_dict().items()})
    chain = fastrnn.from_torch(module)
    assert chain.dtype == dtype and chain.input_layout == "BCT" and chain.output_layout == "BTC"
    # BatchNorm folded into the first conv, Dropout gone, both convs causal.
    assert [type(layer) for layer in chain.layers] == [Conv1d, Activation, Conv1d, Activation,
                                                       Recurrent, Linear, Activation]
    assert all(layer.stream_refusal() is None for layer in chain.layers)
    x = rng.standard_normal((3, 4, 40)).astype(dtype)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    y = chain(x)
    assert y.shape == (3, 40, 2)
    np.testing.assert_allclose(y, expected, rtol=0, atol=tolerance)
    as_tensor = chain(torch.from_numpy(x))
    assert isinstance(as_tensor, torch.Tensor) and np.array_equal(as_tensor.numpy(), y)


def test_time_major_lstm_model_matches_torch(dtype, tolerance, rng):
    torch.manual_seed(13)
    module = TimeMajorLstm().to(torch_dtype(dtype)).eval()
    chain = fastrnn.from_torch(module)
    assert chain.input_layout == "BCT" and chain.output_layout == "TBC"
    x = rng.standard_normal((2, 3, 25)).astype(dtype)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(chain(x), expected, rtol=0, atol=tolerance)


def test_streaming_equals_the_whole_sequence(spotters, rng):
    chain = fastrnn.from_torch(spotters[np.dtype(np.float32)])
    x = rng.standard_normal((2, 4, 50)).astype(np.float32)
    whole = chain(x)                                        # (B, T, classes)
    stream = chain.stream(batch=2)
    steps = np.stack([stream.step(x[:, :, t]) for t in range(50)], axis=1)
    np.testing.assert_allclose(steps, whole, rtol=0, atol=1e-6)
    stream.reset()
    chunks = [stream.process(x[:, :, start:stop])
              for start, stop in ((0, 1), (1, 7), (7, 7), (7, 31), (31, 50))]
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), whole, rtol=0, atol=1e-6)
    single = chain.stream()                                 # batch 1 takes (C,) steps
    out = np.empty(2, np.float32)
    assert single.step(x[0, :, 0], out=out) is out
    np.testing.assert_allclose(out, whole[0, 0], rtol=0, atol=1e-6)


def test_snapshots_round_trip_and_refuse_another_chain(spotters, rng):
    chain = fastrnn.from_torch(spotters[np.dtype(np.float32)])
    x = rng.standard_normal((1, 4, 30)).astype(np.float32)
    whole = chain(x)
    stream = chain.stream()
    stream.process(x[:, :, :17])
    blob = stream.snapshot()
    stream.process(x[:, :, 17:20])                          # moves on; restore goes back
    other = chain.stream()
    for target in (stream, other):
        target.restore(blob)
        np.testing.assert_allclose(target.process(x[:, :, 17:]), whole[:, 17:], rtol=0,
                                   atol=1e-6)
    torch.manual_seed(99)
    different = fastrnn.from_torch(KeywordSpotter().eval())  # same shapes, other weights
    with pytest.raises(ValueError, match="different chain"):
        different.stream().restore(blob)
    with pytest.raises(ValueError, match="1 row"):
        chain.stream(batch=2).restore(blob)
    damaged = bytearray(blob)
    damaged[60] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        other.restore(bytes(damaged))
    later = bytearray(blob[:-4])
    later[8:12] = struct.pack("<I", 2)
    with pytest.raises(ValueError, match="version 2"):
        other.restore(bytes(later) + struct.pack("<I", zlib.crc32(bytes(later))))
    with pytest.raises(ValueError, match="not a fastrnn chain snapshot"):
        other.restore(b"FRNNSNAP" + bytes(80))
    # A refused restore leaves the stream as it was.
    other.reset()
    other.restore(blob)
    np.testing.assert_allclose(other.process(x[:, :, 17:]), whole[:, 17:], rtol=0, atol=1e-6)


def test_a_hand_built_chain_and_its_errors(rng):
    conv = Conv1d(rng.standard_normal((4, 2, 3)), np.zeros(4), dtype=np.float64)
    chain = fastrnn.Chain([conv, Activation("relu", 4, dtype=np.float64),
                           Linear(rng.standard_normal((1, 4)), dtype=np.float64)])
    x = rng.standard_normal((12, 2, 2))                      # (T, B, C): the default layout
    y = chain(x)
    stream = chain.stream(batch=2)
    np.testing.assert_allclose(np.stack([stream.step(x[t]) for t in range(12)]), y, rtol=0,
                               atol=1e-6)
    with pytest.raises(ValueError, match="must have 2 channels"):
        chain(np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match="must be 3-D"):
        chain(np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"x_t .* must have shape \(2, 2\), got \(3,\)"):
        stream.step(np.zeros(3))
    with pytest.raises(ValueError, match="chunk has 3 rows"):
        stream.process(np.zeros((4, 3, 2)))
    with pytest.raises(TypeError, match="floating-point"):
        chain(np.zeros((5, 2, 2), np.int64))
    with pytest.raises(ValueError, match="layer 1 .* takes 5 channels, layer 0 gives 4"):
        fastrnn.Chain([conv, Activation("relu", 5, dtype=np.float64)])
    with pytest.raises(ValueError, match="one dtype"):
        fastrnn.Chain([conv, Activation("relu", 4)])
    with pytest.raises(ValueError, match="input_layout must be one of"):
        fastrnn.Chain([conv], input_layout="NCT")


def test_look_ahead_models_run_whole_but_refuse_to_stream(rng):
    torch.manual_seed(14)
    module = nn.Sequential(nn.Conv1d(2, 3, 3, padding="same"), nn.ReLU(),
                           nn.Conv1d(3, 2, 3, dilation=2)).eval()
    chain = fastrnn.from_torch(module)
    x = rng.standard_normal((2, 2, 20)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(chain(x), expected, rtol=0, atol=3e-5)
    with pytest.raises(ValueError, match=r"layer 0, .*pads 1 step\(s\) on the right.*looks ahead"):
        chain.stream()
    bidirectional = nn.Sequential(nn.Linear(2, 3))
    assert fastrnn.from_torch(bidirectional).input_layout == "BTC"


def test_unsupported_modules_are_refused_by_name_and_type():
    with pytest.raises(ValueError, match=r"^1 \(MaxPool1d\): torch\.nn\.modules\.pooling\.MaxPool1d"
                                         r" is not a module fastrnn runs"):
        fastrnn.from_torch(nn.Sequential(nn.Conv1d(2, 3, 3), nn.MaxPool1d(2)))
    with pytest.raises(ValueError, match=r"^0 \(Conv1d\) has stride 2"):
        fastrnn.from_torch(nn.Sequential(nn.Conv1d(2, 3, 3, stride=2)))

    class UsesState(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(2, 3, batch_first=True)
            self.head = nn.Linear(3, 1)

        def forward(self, x):
            _, h = self.gru(x)
            return self.head(h)

    with pytest.raises(ValueError, match="element 1 of a recurrent layer's output"):
        fastrnn.from_torch(UsesState())

    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.b(self.a(x)) * 0 + self.a(x)

    with pytest.raises(ValueError, match="not an operation fastrnn runs|previous layer's output"):
        fastrnn.from_torch(Branches())

    class WrongLayout(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.gru = nn.Conv1d(2, 2, 1), nn.GRU(2, 2, batch_first=True)

        def forward(self, x):
            return self.gru(self.conv(x))[0]              # no permute: time and channels swapped

    with pytest.raises(ValueError, match=r"^gru \(GRU\) needs axis 1 of its input to be time"):
        fastrnn.from_torch(WrongLayout())
    with pytest.raises(ValueError, match="kind= and batch_first="):
        fastrnn.from_torch(nn.Sequential(nn.Linear(2, 2)), batch_first=True)


class ResidualTcn(nn.Module):
    """Two residual blocks of causal dilated convs (a TCN), then a GRU head: x + f(x) adds."""

    def __init__(self, channels=4):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ConstantPad1d((2 * d, 0), 0.0), nn.Conv1d(channels, channels, 3,
                          dilation=d), nn.BatchNorm1d(channels), nn.PReLU(channels))
            for d in (1, 2))
        self.gru = nn.GRU(channels, 3)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return self.gru(x.permute(2, 0, 1))[0]


def test_residual_blocks_match_torch_and_stream(dtype, tolerance, rng):
    torch.manual_seed(15)
    module = with_statistics(ResidualTcn(), 16).to(torch_dtype(dtype)).eval()
    chain = fastrnn.from_torch(module)
    assert [type(layer).__name__ for layer in chain.layers] == ["Residual", "Residual",
                                                               "Recurrent"]
    x = rng.standard_normal((2, 4, 30)).astype(dtype)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    whole = chain(x)
    np.testing.assert_allclose(whole, expected, rtol=0, atol=tolerance)
    stream = chain.stream(batch=2)
    steps = np.stack([stream.step(x[:, :, t]) for t in range(12)])
    blob = stream.snapshot()
    np.testing.assert_allclose(steps, whole[:12], rtol=0, atol=1e-6)
    np.testing.assert_allclose(stream.process(x[:, :, 12:]), whole[12:], rtol=0, atol=1e-6)
    stream.restore(blob)
    np.testing.assert_allclose(stream.process(x[:, :, 12:]), whole[12:], rtol=0, atol=1e-6)


def test_a_pool_of_chains_equals_one_stream_per_user(spotters, rng):
    chain = fastrnn.from_torch(spotters[np.dtype(np.float32)])
    users = rng.standard_normal((3, 4, 24)).astype(np.float32)     # 3 users, (C, T) each
    streams = [chain.stream() for _ in range(3)]
    pool = chain.pool(capacity=5)
    slots = np.array([4, 1, 2])
    for t in range(24):
        # Some users speak at each tick, in a shuffled order: only their slots move.
        speaking = [u for u in range(3) if (t + u) % 3]
        order = rng.permutation(speaking)
        ys = pool.step(slots[order], users[order, :, t])
        for row, user in enumerate(order):
            np.testing.assert_allclose(ys[row], streams[user].step(users[user, :, t]), rtol=0,
                                       atol=1e-6)
    # A slot's snapshot is a batch-1 stream's, both ways; export/import moves several at once.
    for user in range(3):
        assert pool.snapshot(slots[user]) == streams[user].snapshot()
    fresh = chain.stream()
    fresh.restore(pool.snapshot(slots[0]))
    x = users[0, :, :5].T.copy()
    np.testing.assert_allclose(pool.step([slots[0]], x[:1]), fresh.step(x[0])[None], rtol=0,
                               atol=0)
    other = chain.pool(capacity=3)
    other.import_([2, 0, 1], pool.export(slots))
    np.testing.assert_array_equal(other.export([2, 0, 1]), pool.export(slots))
    pool.reset([slots[1]])
    assert pool.snapshot(slots[1]) == chain.stream().snapshot()
    with pytest.raises(ValueError, match="distinct"):
        pool.step([1, 1], np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="slot 5 is out of range"):
        pool.reset([5])
    with pytest.raises(ValueError, match=r"holds 3 row\(s\); 2 were asked for"):
        other.import_([0, 1], pool.export(slots))
    with pytest.raises(ValueError, match=r"xs .* must have shape \(2, 4\)"):
        pool.step([0, 1], np.zeros((2, 3), np.float32))


def test_snapshot_headers_with_nonzero_padding_are_refused(spotters):
    chain = fastrnn.from_torch(spotters[np.dtype(np.float32)])
    stream = chain.stream()
    model = fastrnn.from_torch(nn.GRU(2, 3))
    for blob, target in ((stream.snapshot(), stream), (model.stream().snapshot(),
                                                      model.stream())):
        padded = bytearray(blob[:-4])
        padded[46] = 7                                # the padding after the dtype code
        padded = bytes(padded) + struct.pack("<I", zlib.crc32(bytes(padded)))
        with pytest.raises(ValueError, match="padding bytes 45-47 are not zero"):
            target.restore(padded)
        target.restore(blob)


def test_a_saved_chain_loads_back_bit_for_bit(spotters, tmp_path, rng):
    torch.manual_seed(15)
    tcn = fastrnn.from_torch(with_statistics(ResidualTcn(), 16).eval())
    for chain in (fastrnn.from_torch(spotters[np.dtype(np.float32)]), tcn):
        path = tmp_path / "chain.fastrnn"
        chain.save(path)
        loaded = fastrnn.load(path)
        assert isinstance(loaded, fastrnn.Chain) and repr(loaded) == repr(chain)
        assert loaded.fingerprint() == chain.fingerprint()  # every weight, bit for bit
        x = rng.standard_normal((2, 4, 20)).astype(np.float32)
        np.testing.assert_array_equal(loaded(x), chain(x))
        stream = chain.stream()
        stream.process(x[:1, :, :7])
        again = loaded.stream()
        again.restore(stream.snapshot())              # its snapshots carry over
        np.testing.assert_array_equal(again.process(x[:1, :, 7:]), stream.process(x[:1, :, 7:]))
    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged: the weights' checksum"):
        fastrnn.load(path)
    model = fastrnn.from_torch(nn.GRU(2, 3))
    model.save(tmp_path / "model.fastrnn")
    assert isinstance(fastrnn.load(tmp_path / "model.fastrnn"), fastrnn.Model)


def test_a_learned_start_state_is_kept_by_streams_pools_and_files(tmp_path, rng):
    torch.manual_seed(17)
    model = fastrnn.from_torch(nn.LSTM(2, 3, num_layers=2))
    start = (rng.standard_normal((2, 3)), rng.standard_normal((2, 3)))
    layer = Recurrent(model, initial_state=start)
    chain = fastrnn.Chain([layer, Linear(rng.standard_normal((1, 3)))])
    x = rng.standard_normal((9, 2, 2)).astype(np.float32)
    expected = layer.sequence(x) @ chain.layers[1].weight.T     # the engine's run from start
    np.testing.assert_allclose(chain(x), expected, rtol=0, atol=1e-6)
    pool = chain.pool(capacity=4)
    np.testing.assert_allclose(pool.process([3, 1], x), expected, rtol=0, atol=1e-6)
    pool.reset([3, 1])
    np.testing.assert_allclose(pool.process([1, 3], x[:, ::-1]), expected[:, ::-1], rtol=0,
                               atol=1e-6)
    chain.save(tmp_path / "start.fastrnn")
    loaded = fastrnn.load(tmp_path / "start.fastrnn")
    assert loaded.fingerprint() == chain.fingerprint()
    np.testing.assert_array_equal(loaded.stream(batch=2).process(x), chain(x))


def test_a_chain_with_a_last_step_layer_loads_back(tmp_path, rng):
    """Keras's return_sequences=False becomes a LastStep layer; the chain file keeps it."""
    from fastrnn.converters.keras import LastStep
    torch.manual_seed(19)
    model = fastrnn.from_torch(nn.GRU(2, 3))
    chain = fastrnn.Chain([Recurrent(model), LastStep(3), Linear(rng.standard_normal((1, 3)))])
    chain.save(tmp_path / "last.fastrnn")
    loaded = fastrnn.load(tmp_path / "last.fastrnn")
    assert repr(loaded) == repr(chain) and loaded.fingerprint() == chain.fingerprint()
    x = rng.standard_normal((6, 2, 2)).astype(np.float32)
    y = loaded(x)
    assert y.shape == (1, 2, 1)
    np.testing.assert_array_equal(y, chain(x))
    expected = model(x)[0][-1:] @ chain.layers[2].weight.T + chain.layers[2].bias
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6)


def test_a_chain_file_with_a_tampered_header_is_refused(tmp_path, rng):
    import json
    chain = fastrnn.Chain([Linear(rng.standard_normal((2, 3))), Activation("tanh", 2)])
    path = tmp_path / "chain.fastrnn"
    chain.save(path)
    blob = path.read_bytes()
    size = struct.unpack_from("<Q", blob, 12)[0]
    header = json.loads(blob[24:24 + size])

    def rewritten(edit):
        changed = json.loads(json.dumps(header))
        edit(changed)
        text = json.dumps(changed).encode()
        text += b" " * (-(24 + len(text)) % 8)
        return (blob[:8] + struct.pack("<IQI", 1, len(text), zlib.crc32(text)) + text
                + blob[24 + size:])

    for edit, message in (
            (lambda h: h["chain"]["layers"][1].update(name="softsign"), "activation must be"),
            (lambda h: h["chain"]["layers"][0].update(type="dense"), "unknown type 'dense'"),
            (lambda h: h["chain"]["layers"][0].update(out_features=5), "does not match"),
            (lambda h: h["arrays"].pop(), "has no array '0.weight'"),
            (lambda h: h["arrays"][1].update(name="0.extra"), "no array '0.weight'"),
            (lambda h: h["arrays"].append({"name": "9.w", "shape": [1], "offset": 0}),
             r"\['9.w'\] belong to no layer")):
        path.write_bytes(rewritten(edit))
        with pytest.raises(ValueError, match=f"malformed chain header: .*{message}"):
            fastrnn.load(path)


def test_a_chain_with_low_bit_weights_streams_layer_by_layer(rng):
    torch.manual_seed(18)
    model = fastrnn.from_torch(nn.LSTM(2, 4)).with_weights("bfloat16")
    chain = fastrnn.Chain([Recurrent(model), Linear(rng.standard_normal((1, 4)))])
    x = rng.standard_normal((10, 2, 2)).astype(np.float32)
    whole = chain(x)
    expected = model(x)[0] @ chain.layers[1].weight.T
    np.testing.assert_allclose(whole, expected, rtol=0, atol=1e-6)
    stream = chain.stream(batch=2)
    np.testing.assert_allclose(np.concatenate([stream.process(x[:3]), stream.process(x[3:])]),
                               whole, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no op for"):
        chain.pool()


@pytest.mark.parametrize("layout, batch, channels, direct", [
    ("TBC", 2, 3, True), ("BTC", 1, 3, True), ("BTC", 2, 3, False), ("BCT", 1, 3, False),
    ("BCT", 1, 1, True)])
def test_process_takes_ready_chunks_as_they_are_and_others_converted(layout, batch, channels,
                                                                     direct, rng):
    # A ready chunk (the chain's dtype, C-contiguous, writable) whose (step, row) pairs lie
    # time-major in memory (its axes of more than one element in TBC's order) goes to the kernel
    # as it is; every other chunk is converted first. Both give the whole sequence's answer,
    # each call a fresh array.
    torch.manual_seed(19)
    lstm = Recurrent(fastrnn.from_torch(nn.LSTM(channels, 5)))
    chain = fastrnn.Chain([lstm, Linear(rng.standard_normal((channels, 5)))],
                          input_layout=layout, output_layout=layout)
    shape = {"T": 9, "B": batch, "C": channels}
    x = rng.standard_normal([shape[axis] for axis in layout]).astype(np.float32)
    whole = chain(x)
    time_axis = layout.index("T")
    cut = lambda array, start, stop: np.take(array, np.arange(start, stop), axis=time_axis)
    ready = chain.stream(batch)
    assert (ready._direct is not None) == direct
    first, second = ready.process(cut(x, 0, 4)), ready.process(cut(x, 4, 9))
    np.testing.assert_allclose(np.concatenate([first, second], axis=time_axis), whole, rtol=0,
                               atol=1e-6)
    converted = chain.stream(batch)
    read_only = cut(x, 0, 4)
    read_only.flags.writeable = False
    pieces = [converted.process(read_only), converted.process(np.asfortranarray(cut(x, 4, 9)))]
    np.testing.assert_allclose(np.concatenate(pieces, axis=time_axis), whole, rtol=0,
                               atol=1e-6)
    assert not np.shares_memory(first, x) and not np.shares_memory(first, second)
