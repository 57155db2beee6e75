"""The recurrent state, laid out as PyTorch's (h_n, c_n)."""

from typing import NamedTuple, Optional

import numpy as np


class State(NamedTuple):
    """h: (L*D, B, H_out); c: (L*D, B, H) for an LSTM, None otherwise.

    Rows of the first axis go layer by layer, forward direction before reverse. Unpacks as a
    tuple: `y, (h, c) = lstm(x)`, like torch.
    """

    h: np.ndarray
    c: Optional[np.ndarray] = None
