"""Train the small model that `make demo` runs, and write examples/demo_lstm.safetensors.

The model is a real one: a 2-layer nn.LSTM (16 inputs, 64 hidden) with a linear head, trained for
a few hundred Adam steps to predict the next value of a sine wave from 16 noisy sensor channels
that each see the wave at a different gain and phase. The state dict is saved as PyTorch names it,
the LSTM under "rnn." and the head under "head.", so the demo also shows `prefix=`.

    python examples/make_demo_model.py    # a few minutes on two cores; same torch, same weights

Needs torch and safetensors (pip install 'fastrnn[torch]').
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

INPUT_SIZE, HIDDEN_SIZE, NUM_LAYERS = 16, 64, 2
HERE = Path(__file__).parent


class SinePredictor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=NUM_LAYERS)
        self.head = torch.nn.Linear(HIDDEN_SIZE, 1)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)[..., 0]


def make_batch(steps, batch, generator, noise=0.3):
    """(x (T, B, 16), target (T, B)): noisy views of a sine wave, and its next clean value.

    Each row has its own frequency and phase; channel k sees gain_k * sin(phase + shift_k) plus
    Gaussian noise. The target at step t is the clean wave at step t + 1.
    """
    frequency = 0.05 + 0.15 * torch.rand(batch, generator=generator)
    start = 2 * np.pi * torch.rand(batch, generator=generator)
    phase = start[None, :] + frequency[None, :] * torch.arange(steps + 1)[:, None]  # (T+1, B)
    gains = torch.linspace(0.5, 1.5, INPUT_SIZE)
    shifts = torch.linspace(0.0, np.pi / 2, INPUT_SIZE)
    clean = torch.sin(phase[:, :, None] + shifts) * gains  # (T+1, B, 16)
    x = clean[:-1] + noise * torch.randn(steps, batch, INPUT_SIZE, generator=generator)
    return x, torch.sin(phase[1:])


def train(steps, seed=0):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = SinePredictor()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        x, target = make_batch(60, 32, generator)
        loss = torch.nn.functional.mse_loss(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:4d}  mse {loss.item():.4f}")
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="Adam steps (default 400)")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "demo_lstm.safetensors")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = train(args.steps).eval()
    with torch.no_grad():
        x, target = make_batch(200, 64, torch.Generator().manual_seed(123))
        mse = torch.nn.functional.mse_loss(model(x), target).item()
        naive = torch.nn.functional.mse_loss(x[..., 0], target).item()  # channel 0 as a guess
    print(f"held-out mse {mse:.4f} (guessing from channel 0 alone: {naive:.4f})")
    save_file({name: value.contiguous() for name, value in model.state_dict().items()},
              str(args.output), metadata={"task": "next value of a sine from 16 noisy channels",
                                          "adam_steps": str(args.steps)})
    print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
