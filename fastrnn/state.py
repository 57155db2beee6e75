"""The recurrent state, laid out as PyTorch's (h_n, c_n)."""

from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence, Union

import numpy as np


class State(NamedTuple):
    """h: (L*D, B, H_out); c: (L*D, B, H) for an LSTM, None otherwise.

    Rows of the first axis go layer by layer, forward direction before reverse. Unpacks as a
    tuple: `y, (h, c) = lstm(x)`, like torch.
    """

    h: np.ndarray
    c: Optional[np.ndarray] = None


if TYPE_CHECKING:  # for type checkers only: numpy.typing costs import time
    import numpy.typing as npt

    # A state as model(x, state=...) takes it: an LSTM's (h, c) or State, a GRU's or RNN's h.
    StateLike = Union[State, Sequence[npt.ArrayLike], npt.ArrayLike]
