"""`make demo`: a trained PyTorch LSTM run by fastrnn, checked against torch, timed beside it.

1. Convert examples/demo_lstm.safetensors (a 2-layer LSTM, 16 inputs, 64 hidden, trained by
   examples/make_demo_model.py to predict a sine wave from noisy channels) with fastrnn.from_torch.
2. Run whole sequences and compare outputs and final states with torch's nn.LSTM.
3. Run a stream, one timestep per call, and compare it with the whole-sequence answers and with
   torch stepping the same inputs.
4. Time one step per call, B=1, state carried: fastrnn's stream, torch's nn.LSTM fed one step at a
   time, and a stack of torch nn.LSTMCell (torch's fastest per-step path); then one whole sequence.

Exits non-zero if any answer is outside DESIGN.md's tolerances (float32: 3e-5 against torch,
1e-6 between streaming and whole sequences).
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

import fastrnn
from make_demo_model import SinePredictor, make_batch

MODEL_PATH = Path(__file__).parent / "demo_lstm.safetensors"
TORCH_TOLERANCE = 3e-5
STREAM_TOLERANCE = 1e-6
TIMED_CALLS, WARMUP_CALLS = 3000, 300
TIME_BUDGET_S = 3.0  # per engine: a busy machine can stretch torch's calls a hundredfold

failures = []


def check(what, error, tolerance):
    verdict = "ok" if error <= tolerance else "TOO LARGE"
    if error > tolerance:
        failures.append(what)
    print(f"  {what:<44} max abs error {error:.2e}  (tolerance {tolerance:.0e}) {verdict}")


def per_call_us(function, inputs):
    """(median, 99th percentile) of one call in microseconds, and the number of calls timed.

    TIMED_CALLS calls after WARMUP_CALLS, or fewer if they use up TIME_BUDGET_S.
    """
    for t in range(WARMUP_CALLS):
        function(inputs[t % len(inputs)])
    durations = np.empty(TIMED_CALLS)
    clock = time.perf_counter
    deadline = clock() + TIME_BUDGET_S
    for t in range(TIMED_CALLS):
        x = inputs[t % len(inputs)]
        start = clock()
        function(x)
        end = clock()
        durations[t] = end - start
        if end > deadline:
            break
    durations = durations[:t + 1]
    return np.median(durations) * 1e6, np.percentile(durations, 99) * 1e6, len(durations)


def main():
    print(f"fastrnn {fastrnn.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), numpy {np.__version__}\n")

    # 1. Convert. The file holds the whole network; prefix picks the LSTM ("rnn.*").
    start = time.perf_counter()
    model = fastrnn.from_torch(MODEL_PATH, prefix="rnn")
    converted = time.perf_counter() - start
    print(f"converted {MODEL_PATH.name} in {converted * 1e3:.0f} ms: {model}")
    state_dict = load_file(str(MODEL_PATH))
    network = SinePredictor().eval()
    network.load_state_dict(state_dict)
    lstm = network.rnn
    head_weight = state_dict["head.weight"].numpy()
    head_bias = state_dict["head.bias"].numpy()

    x, target = make_batch(500, 4, torch.Generator().manual_seed(2024))
    x_numpy = x.numpy()

    # 2. Whole sequences.
    start = time.perf_counter()
    y, state = model(x_numpy)
    first_answer = time.perf_counter() - start
    with torch.inference_mode():
        torch_y, (torch_h, torch_c) = lstm(x)
    print(f"\nwhole sequences, T={x.shape[0]}, B={x.shape[1]} (first call, with JIT load: "
          f"{first_answer * 1e3:.0f} ms)")
    check("y vs torch nn.LSTM", np.abs(y - torch_y.numpy()).max(), TORCH_TOLERANCE)
    check("final h vs torch", np.abs(state.h - torch_h.numpy()).max(), TORCH_TOLERANCE)
    check("final c vs torch", np.abs(state.c - torch_c.numpy()).max(), TORCH_TOLERANCE)
    prediction = y @ head_weight.T + head_bias
    mse = np.mean((prediction[..., 0] - target.numpy()) ** 2)
    print(f"  the trained task: next-value mse {mse:.4f} with the torch head on fastrnn's y "
          f"(signal variance {target.numpy().var():.2f})")

    # 3. A stream, one timestep per call, row 0 of the batch.
    stream = model.stream(batch=1)
    row = np.ascontiguousarray(x_numpy[:, :1, :])  # (T, 1, 16): one (1, 16) input per step
    stream_y = np.stack([stream.step(row[t]) for t in range(len(row))])
    cells = [torch.nn.LSTMCell(lstm.input_size if k == 0 else lstm.hidden_size, lstm.hidden_size)
             for k in range(lstm.num_layers)]
    for k, cell in enumerate(cells):
        cell.load_state_dict({name: getattr(lstm, f"{name}_l{k}") for name in
                              ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
    cell_states = [None] * len(cells)

    def cell_stack_step(x_t):
        below = x_t
        for k, cell in enumerate(cells):
            cell_states[k] = cell(below, cell_states[k])
            below = cell_states[k][0]
        return below

    with torch.inference_mode():
        cell_y = np.stack([cell_stack_step(torch.from_numpy(row[t])).numpy()
                           for t in range(len(row))])
    print(f"\nstream, one step per call, {len(row)} steps")
    check("stream vs whole sequence (fastrnn)", np.abs(stream_y - y[:, :1]).max(),
          STREAM_TOLERANCE)
    check("stream vs torch nn.LSTMCell stack", np.abs(stream_y - cell_y).max(), TORCH_TOLERANCE)
    final = stream.state
    check("stream final c vs torch", np.abs(final.c[:, 0] - np.stack(
        [s[1][0].numpy() for s in cell_states])).max(), TORCH_TOLERANCE)

    # 4. Latency: one step per call, B=1, state carried between calls.
    steps = [np.ascontiguousarray(row[t]) for t in range(len(row))]
    torch_steps = [torch.from_numpy(s) for s in steps]
    stream.reset()
    timings = {"fastrnn  stream.step": per_call_us(stream.step, steps)}
    lstm_state = [None]

    def lstm_step(x_t):
        _, lstm_state[0] = lstm(x_t[None], lstm_state[0])

    with torch.inference_mode():
        timings["torch    nn.LSTM, one step per call"] = per_call_us(lstm_step, torch_steps)
        cell_states[:] = [None] * len(cells)
        timings["torch    nn.LSTMCell stack"] = per_call_us(cell_stack_step, torch_steps)
    print(f"\nper-step latency, B=1, I={model.input_size}, H={model.hidden_size}, "
          f"{model.config.num_layers} layers, after {WARMUP_CALLS} warm-up calls")
    fastest_torch = min(median for name, (median, _, _) in timings.items()
                        if name.startswith("torch"))
    for name, (median, p99, calls) in timings.items():
        print(f"  {name:<38} median {median:8.1f} us   p99 {p99:8.1f} us   ({calls} calls)")
    print(f"  fastrnn is {fastest_torch / timings['fastrnn  stream.step'][0]:.1f}x faster per "
          f"step than torch's fastest path here")

    # And one whole sequence, B=1.
    sequence = x_numpy[:, :1]
    sequence_torch = torch.from_numpy(np.ascontiguousarray(sequence))
    repeats = 20
    model(sequence)
    start = time.perf_counter()
    for _ in range(repeats):
        model(sequence)
    fastrnn_seconds = (time.perf_counter() - start) / repeats
    with torch.inference_mode():
        lstm(sequence_torch)
        start = time.perf_counter()
        for _ in range(repeats):
            lstm(sequence_torch)
        torch_seconds = (time.perf_counter() - start) / repeats
    print(f"\nwhole sequence, T={len(sequence)}, B=1: fastrnn {fastrnn_seconds * 1e3:.2f} ms, "
          f"torch nn.LSTM {torch_seconds * 1e3:.2f} ms (mean of {repeats})")

    if failures:
        print(f"\nFAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("\nall answers match torch within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
