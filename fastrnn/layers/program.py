"""A chain compiled into one flat program, and the one kernel that streams it.

A chain's layers become a list of ops, one row each of an int64 table (OP_COLUMNS wide):

    CODE        LINEAR, CONV, ACTIVATION, LAYER_NORM, AFFINE, CELL, RECURRENT or ADD
    SRC, DST    the buffer regions (below) the op reads and writes; region 0 is the input,
                copied in; the last op's region is copied out to the output
    SRC2        ADD only: the second summand's region
    IN, OUT     channels in and out
    W0, W1      offsets into the one flat weights array (the op's weight and bias, scale and
                shift, an activation's scalars and PReLU slopes, a stack's plan weights)
    S0, S1      offsets into the one flat state array (a conv's ring buffers; a layer's h and c)
    P0          offset into the int64 state array (a conv's ring positions, one per row)
    X0, F0      offsets into the int64 and float64 parameter arrays (a CELL's plan layout row,
                its weight offsets made absolute; a RECURRENT stack's layout and parameters; a
                LayerNorm's eps); a conv's dilation in X0 and its (taps, inputs, outputs)
                weights' offset in F0
    A0, A1, A2  a conv's taps K, inputs per group and history H = (K - 1) d; an activation's
                code and its scalar and slope counts; a RECURRENT stack's plan weight count,
                its layer count and the width of its c (0 for cells without c)

Every layer of an LSTM/GRU/RNN stack of torch's cells is one CELL op (fastrnn.engine.flat
cell_flat: the engine's cell equations and product order); any other stack (peepholes, a
projection, a clip, other activations) is one RECURRENT op run by the engine's step_block. A
Residual around f is f's ops, reading the residual's input region, then an ADD of that region to
f's output: residuals nest without a nested program. Each op's output has its own region of the
buffer, a whole number of cache lines wide; state offsets are per row in `ops` and scaled to a
table's capacity by `ops_for`.

`run_program` runs a chunk, xs (T * N, C_in) -> ys (T * N, C_out) (a time-major (T, N, C) chunk
with its first two axes merged, so that a step's (N, C) arrays go in as they are: a reshape
costs a step more than its kernel call's arguments do), for the N state rows slots[0..N-1] (a
stream's rows are 0..B-1, a pool's any distinct slots). It goes through the chunk in passes of
up to PASS_STEPS steps and PASS_ROWS (step, row) pairs, taking each op through every step of a
pass before the next op: a region holds the pass's pairs, time-major, (pairs, width) from
pass_pairs * column on. A layer has no feedback from the layers after it, so the order changes
no result. Stateless ops (LINEAR, ACTIVATION, LAYER_NORM, AFFINE, ADD) then make one call a
pass, and so does a CONV (its inputs a few steps back are in the buffer, older ones in its ring
buffers); so does a CELL (cell_flat: its input products b + W_ih x for the whole pass in one
product, then its recurrent steps one by one, inside the call); a RECURRENT stack goes step by
step. Each family's flat jitted step (`*_flat` beside each layer's own step kernel) does the
work. They index flat arrays and make no array views: in a kernel each view costs an atomic
reference count, tens of ns, which was most of a step when every op sliced its weights and rows;
so does each call that passes arrays (per array, on entry and exit), hence a call a pass. Their
indexes are unsigned, so that LLVM drops the negative-index wraparound check and vectorises the
loops. One kernel serves every chain: one specialisation per dtype, cached on disk; a chain with
a RECURRENT op runs its twin from the same source, run_program_with_stacks, with the engine's
step_block compiled in (which would triple every chain's first compile).
"""

from __future__ import annotations

import numpy as np
from numba import uint64

from fastrnn.engine import memory
from fastrnn.engine.driver import step_block, step_scratch_size
# A pass of run_program: at most PASS_STEPS steps and PASS_ROWS (step, row) pairs, as the
# engine's sequence_flat.
from fastrnn.engine.flat import PASS_ROWS, PASS_STEPS, cell_flat, flat_scratch_size
from fastrnn.engine.jit import kernel
from fastrnn.engine.plan import LAYOUT_COLUMNS, PARAMETER_COLUMNS
from fastrnn.engine.plan import B_HN, BIAS, W_HH, W_IH, has_flat_cell
from fastrnn.layers.activation import Activation, activation_flat
from fastrnn.layers.conv import Conv1d, conv_flat
from fastrnn.layers.last_step import LastStep
from fastrnn.layers.linear import Linear, linear_flat
from fastrnn.layers.norm import Affine, LayerNorm, affine_flat, layer_norm_flat
from fastrnn.layers.recurrent import Recurrent
from fastrnn.layers.residual import Residual

LINEAR, CONV, ACTIVATION, LAYER_NORM, AFFINE, RECURRENT, ADD, CELL = range(8)
(CODE, SRC, DST, SRC2, IN, OUT, W0, W1, S0, S1, P0, X0, F0, A0, A1, A2) = range(16)
OP_COLUMNS = 16


def _program_kernel(with_stacks):
    """run_program, with the engine's step_block compiled in for RECURRENT ops or not (a
    constant: the branch is pruned before typing, and step_block alone triples the first
    compile, 19 -> 54 s on the development machine)."""

    def run_program(ops, weights, iparams, fparams, state, istate, capacity, slots, xs, ys,
                    buffer, scratch):
        """Every op of the program for every step of xs (T * N, C_in) -> ys (T * N, C_out), row
        t N + n of step t for state row slots[n] of a table of `capacity` rows (slots (N,)).
        buffer (>= N * the program's columns,) holds the step's input and the ops' outputs;
        scratch (>= Program.scratch_size(N),) the cells' gates."""
        rows = slots.shape[0]
        steps = xs.shape[0] // rows if rows else 0
        inputs, outputs = xs.shape[1], ys.shape[1]
        final = ops.shape[0] - 1
        # Steps a pass: as many as the buffer holds (Program.buffer_size sized it).
        block = max(1, buffer.shape[0] // max(1, rows * (ops[final, DST] + ops[final, OUT])))
        stride = block * rows  # region k of the buffer starts at stride * k
        last = stride * ops[final, DST]
        for start in range(0, steps, block):
            count = min(block, steps - start)
            block_rows = count * rows  # the pass's (step, row) pairs, time-major
            first_row = start * rows
            for r in range(block_rows):
                for j in range(inputs):
                    buffer[uint64(r * inputs + j)] = xs[first_row + r, j]
            for p in range(ops.shape[0]):
                code, n_in, n_out = ops[p, CODE], ops[p, IN], ops[p, OUT]
                source, target = stride * ops[p, SRC], stride * ops[p, DST]
                w0, w1 = ops[p, W0], ops[p, W1]
                if code == CELL:
                    cell_flat(buffer, source, target, rows, count, slots, state, ops[p, S0],
                              state, ops[p, S1], weights, iparams, ops[p, X0], scratch, stride)
                elif code == LINEAR:
                    linear_flat(buffer, source, target, block_rows, weights, w0, w1, n_in, n_out)
                elif code == CONV:
                    conv_flat(buffer, source, target, rows, count, slots, state, ops[p, S0],
                              istate, ops[p, P0], weights, w0, ops[p, F0], w1, n_in, n_out,
                              ops[p, A1], ops[p, A0], ops[p, X0], ops[p, A2])
                elif code == ACTIVATION:
                    activation_flat(buffer, source, target, block_rows, n_in, ops[p, A0], weights,
                                    w0, w1, ops[p, A2])
                elif code == LAYER_NORM:
                    layer_norm_flat(buffer, source, target, block_rows, weights, w0, w1,
                                    fparams[ops[p, F0]], n_in)
                elif code == AFFINE:
                    affine_flat(buffer, source, target, block_rows, weights, w0, w1, n_in)
                elif code == ADD:
                    other = stride * ops[p, SRC2]
                    for j in range(block_rows * n_in):
                        buffer[uint64(target + j)] = (buffer[uint64(source + j)]
                                                      + buffer[uint64(other + j)])
                elif with_stacks:  # RECURRENT: a stack only the engine's step_block runs
                    layers, hidden_c = ops[p, A1], ops[p, A2]
                    layout = iparams[ops[p, X0]:ops[p, X0] + layers * LAYOUT_COLUMNS].reshape(
                        (layers, LAYOUT_COLUMNS))
                    first = ops[p, F0]
                    parameters = fparams[first:first + layers * PARAMETER_COLUMNS].reshape(
                        (layers, PARAMETER_COLUMNS))
                    h_at, c_at = ops[p, S0], ops[p, S1]
                    h = state[h_at:h_at + layers * capacity * n_out].reshape(
                        (layers, capacity, n_out))
                    c = state[c_at:c_at + layers * capacity * hidden_c].reshape(
                        (layers, capacity, hidden_c))
                    for step in range(count):
                        x_at = source + step * rows * n_in
                        y_at = target + step * rows * n_out
                        x = buffer[x_at:x_at + rows * n_in].reshape((rows, n_in))
                        y = buffer[y_at:y_at + rows * n_out].reshape((rows, n_out))
                        step_block(weights[w0:w0 + ops[p, A0]], layout, parameters, slots, h, c,
                                   scratch, 0, rows, x, y)
            for r in range(block_rows):
                for j in range(outputs):
                    ys[first_row + r, j] = buffer[uint64(last + r * outputs + j)]

    return kernel(run_program)


run_program = _program_kernel(False)
run_program_with_stacks = _program_kernel(True)


STATELESS = (Linear, Activation, LayerNorm, Affine)


def supports(layers, top=True):
    """Whether every layer (inside residuals too) is one the program has an op for; a chain of
    other Layer subclasses, with a low-bit recurrent stack, or with a LastStep that is first,
    inside a residual or followed by more than stateless layers, streams layer by layer instead
    (TableChain)."""
    for index, layer in enumerate(layers):
        if isinstance(layer, LastStep):
            if not top or not index or not all(isinstance(after, STATELESS)
                                               for after in layers[index + 1:]):
                return False
        elif isinstance(layer, Residual):
            if not supports(layer.layers, top=False):
                return False
        elif not isinstance(layer, (Linear, Conv1d, Activation, LayerNorm, Affine, Recurrent)):
            return False
        elif isinstance(layer, Recurrent) and getattr(layer.model.plan, "encoded", None):
            return False  # low-bit weights (bfloat16, int8): the engine's own kernels read them
    return True


class TableChain:
    """A chain of layers the program lacks, streamed through each layer's own table (see
    fastrnn.layers): the interface of ProgramTable for the rows of one stream, and process()
    for chunks, whose step count a layer may change."""

    def __init__(self, layers, dtype, rows):
        self.tables = [layer.table(rows) for layer in layers]
        self.between = [np.empty((rows, layer.out_features), dtype) for layer in layers[:-1]]

    def run(self, slots, xs, ys):  # one step: xs (rows, C_in) -> ys (rows, C_out)
        x = xs
        for table, destination in zip(self.tables, self.between + [ys]):
            table.step(x, destination)
            x = destination

    def process(self, xs):
        for table in self.tables:
            xs = np.ascontiguousarray(table.chunk(xs))
        return xs

    def shapes(self, rows):
        return [shape for table in self.tables for shape in table.state_shapes()]

    def read(self, slots):
        return [array for table in self.tables for array in table.state()]

    def write(self, slots, arrays):
        position = 0
        for table in self.tables:
            count = len(table.state_shapes())
            table.load(arrays[position:position + count])
            position += count

    def reset(self, slots):
        for table in self.tables:
            table.reset()


class Program:
    """A chain's layers as one flat program (see the module docstring), built once per chain.

    ops (n, OP_COLUMNS) int64 with state offsets per row (ops_for(capacity) scales them);
    weights (read-only), iparams int64, fparams float64; columns: the step buffer's width.
    states: the stateful ops in layer order, ("conv", op, H, C_in) or ("recurrent", op, L,
    H_out, H_c, start): the arrays of a snapshot, in that order (start: the layer's
    initial_state, which reset() returns to, or None for zeros).
    """

    def __init__(self, layers, dtype):
        self.dtype = np.dtype(dtype)
        self._weights, self._ints, self._floats = [], [], []
        self._sizes = [0, 0, 0]  # weights, iparams, fparams elements so far
        self._state_per_row = self._istate_per_row = 0
        self.ops, self.states, self.columns, self._scratch = [], [], 0, []
        self._plans, self._cell_configs = [], []
        source = self._region(layers[0].in_features)  # the step's input, copied in
        for layer in layers:
            source = self._emit(layer, source)
        self.ops = np.array(self.ops, np.int64).reshape(-1, OP_COLUMNS)
        self.weights = memory.copy(np.concatenate([np.zeros(0, self.dtype)] + self._weights),
                                   self.dtype)
        self.weights.setflags(write=False)
        # One spare element at the end: a program without stacks still passes non-empty arrays.
        self.iparams = np.concatenate(self._ints + [np.zeros(1, np.int64)]).astype(np.int64)
        self.fparams = np.concatenate(self._floats + [np.zeros(1, np.float64)])
        self.state_per_row, self.istate_per_row = self._state_per_row, self._istate_per_row
        self.in_features, self.out_features = layers[0].in_features, layers[-1].out_features
        self.entry = None  # run_program's compiled entry point, found by the first ProgramTable
        self.has_stacks = bool(self._plans)  # RECURRENT ops: run_program_with_stacks

    # -- building --

    def _add(self, kind, array):
        """Append `array` to the weights (0), iparams (1) or fparams (2); returns its offset."""
        offset = self._sizes[kind]
        target = (self._weights, self._ints, self._floats)[kind]
        dtype = (self.dtype, np.int64, np.float64)[kind]
        array = np.ascontiguousarray(array, dtype).reshape(-1)
        if kind == 0:  # every weight block on a cache line, as the array starts on one
            array = np.concatenate([array, np.zeros(memory.padding(array.size, dtype), dtype)])
        target.append(array)
        self._sizes[kind] += array.shape[0]
        return offset

    def _region(self, features):
        # Regions a whole number of cache lines wide: each row block (rows * start) begins on one.
        start = self.columns
        self.columns += features + memory.padding(features, self.dtype)
        return start

    def _op(self, code, source, layer, **fields):
        row = [0] * OP_COLUMNS
        row[CODE], row[SRC], row[IN], row[OUT] = code, source, layer.in_features, layer.out_features
        row[DST] = self._region(layer.out_features)
        for name, value in fields.items():
            row[globals()[name]] = int(value)
        self.ops.append(row)
        return row[DST]

    def _emit(self, layer, source):
        """Ops for `layer` reading region `source`; returns the region of its output."""
        if isinstance(layer, Linear):
            return self._op(LINEAR, source, layer, W0=self._add(0, layer.weight),
                            W1=self._add(0, layer.bias))
        if isinstance(layer, Conv1d):
            held = layer.history
            position = self._istate_per_row
            self._istate_per_row += 1
            history = self._state_per_row
            self._state_per_row += held * layer.in_features
            self.states.append(("conv", len(self.ops), held, layer.in_features))
            return self._op(CONV, source, layer, W0=self._add(0, layer.weight),
                            W1=self._add(0, layer.bias), S0=history, P0=position,
                            F0=self._add(0, layer.weight.transpose(2, 1, 0)),
                            X0=layer.dilation, A0=layer.kernel_size,
                            A1=layer.in_features // layer.groups, A2=held)
        if isinstance(layer, Activation):
            return self._op(ACTIVATION, source, layer, W0=self._add(0, layer.params),
                            W1=self._add(0, layer.slopes), A0=layer.code,
                            A1=layer.params.shape[0], A2=layer.slopes.shape[0])
        if isinstance(layer, LayerNorm):
            return self._op(LAYER_NORM, source, layer, W0=self._add(0, layer.weight),
                            W1=self._add(0, layer.bias), F0=self._add(2, [layer.eps]))
        if isinstance(layer, Affine):
            return self._op(AFFINE, source, layer, W0=self._add(0, layer.scale),
                            W1=self._add(0, layer.shift))
        if isinstance(layer, Recurrent):
            plan = layer.model.plan
            config = plan.config
            layers = config.num_layers
            hidden_c = config.hidden_size if config.kind == "lstm" else 0
            h = self._state_per_row
            self._state_per_row += layers * config.output_size
            c = self._state_per_row
            self._state_per_row += layers * hidden_c
            self.states.append(("recurrent", len(self.ops), layers, config.output_size, hidden_c,
                                layer.initial_state))
            if has_flat_cell(plan.layout, plan.parameters):
                return self._cells(layer, plan, source, h, c)
            self._plans.append(plan)
            return self._op(RECURRENT, source, layer, W0=self._add(0, plan.weights),
                            X0=self._add(1, plan.layout), F0=self._add(2, plan.parameters),
                            S0=h, S1=c, A0=plan.weights.shape[0], A1=layers, A2=hidden_c)
        if isinstance(layer, LastStep):
            # No op: the layers after it are stateless, so the chain keeps the last step of
            # the kernel's output instead (Chain.keeps_last_step).
            return source
        if isinstance(layer, Residual):
            inner = source
            for index, sub in enumerate(layer.layers):
                inner = self._emit(sub, inner)
            return self._op(ADD, inner, layer, SRC2=source)
        raise TypeError(f"{layer!r} has no streaming op (a {type(layer).__name__} layer)")

    def _cells(self, layer, plan, source, h, c):
        """One CELL op per layer of a stack that cell_flat runs, its plan rows' weight offsets
        made absolute in the program's weights."""
        config = plan.config
        start = self._add(0, plan.weights)
        hidden_c = config.hidden_size if config.kind == "lstm" else 0
        for index in range(config.num_layers):
            row = np.array(plan.layout[index])
            for column in (W_IH, W_HH, BIAS, B_HN):
                row[column] += start
            self._cell_configs.append(config)
            inputs = config.layer_input_size(index)
            fields = {"X0": self._add(1, row), "S0": h + index * config.output_size,
                      "S1": c + index * hidden_c}
            op = [0] * OP_COLUMNS
            op[CODE], op[SRC], op[IN], op[OUT] = CELL, source, inputs, config.output_size
            op[DST] = self._region(config.output_size)
            for name, value in fields.items():
                op[globals()[name]] = int(value)
            self.ops.append(op)
            source = op[DST]
        return source

    # -- running --

    def ops_for(self, capacity):
        """The op table with its state offsets for a table of `capacity` rows."""
        ops = self.ops.copy()
        for column in (S0, S1, P0):
            ops[:, column] *= capacity
        return ops

    def steps_per_pass(self, rows):
        """How many steps run_program takes an op through before the next op, for `rows` rows:
        enough that an op's per-call costs and its weights' trip through the cache are shared
        by a few dozen (step, row) pairs, few enough that a pass's buffer stays in L1/L2."""
        return max(1, min(PASS_STEPS, PASS_ROWS // max(1, rows)))

    def buffer_size(self, rows):
        """Elements of run_program's buffer for `rows` rows: steps_per_pass(rows) steps of every
        region, up to the end of the last op's (run_program reads its pass length back from
        this size)."""
        span = self.ops[-1, DST] + self.ops[-1, OUT]
        return max(1, self.steps_per_pass(rows) * rows * int(span))

    def scratch_size(self, rows):
        block_rows = self.steps_per_pass(rows) * rows
        return max([1] + [flat_scratch_size(config, rows, block_rows)
                          for config in self._cell_configs]
                   + [step_scratch_size(plan, rows) for plan in self._plans])


class ProgramTable:
    """The state of `capacity` rows of a Program, and its kernel's entry point, bound once.

    run(slots, xs, ys): xs (T * N, C_in) -> ys (T * N, C_out), run_program's time-major rows, for
    the distinct rows `slots` (int64 (N,)); every array C-contiguous, writable, of the program's
    dtype (callers make sure).
    read(slots) -> the snapshot arrays of those rows; write(slots, arrays); reset(slots), to
    the start state (zero, or a recurrent layer's initial_state); every row starts there.
    """

    def __init__(self, program, capacity):
        self.program = program
        self.capacity = capacity
        dtype = program.dtype
        self.state = memory.zeros(program.state_per_row * capacity, dtype)
        self.istate = memory.zeros(program.istate_per_row * capacity, np.int64)
        self.ops = program.ops_for(capacity)
        self.reset(np.arange(capacity))
        self._rows = 0
        self._grow(1)
        self._front = (self.ops, program.weights, program.iparams, program.fparams, self.state,
                       self.istate, capacity)
        if program.entry is None:  # the same argument types for every table of the program
            from fastrnn.layers import entry_point
            xs = np.zeros((0, program.in_features), dtype)
            ys = np.zeros((0, program.out_features), dtype)
            runner = run_program_with_stacks if program.has_stacks else run_program
            program.entry = entry_point(runner, *self._front, np.zeros(1, np.int64), xs, ys,
                                        self._buffer, self._scratch)
        self._kernel = program.entry

    def _grow(self, rows):
        if rows > self._rows:
            self._rows = rows
            self._buffer = memory.empty(self.program.buffer_size(rows), self.program.dtype)
            self._scratch = memory.empty(self.program.scratch_size(rows), self.program.dtype)

    def run(self, slots, xs, ys):
        rows = slots.shape[0]
        if rows > self._rows:
            self._grow(rows)
        self._kernel(*self._front, slots, xs, ys, self._buffer, self._scratch)

    def _views(self, entry):
        op = self.ops[entry[1]]
        if entry[0] == "conv":
            _, _, held, inputs = entry
            history = self.state[op[S0]:op[S0] + self.capacity * held * inputs]
            return (history.reshape(self.capacity, held, inputs),
                    self.istate[op[P0]:op[P0] + self.capacity])
        _, _, layers, outputs, hidden_c, _ = entry
        h = self.state[op[S0]:op[S0] + layers * self.capacity * outputs]
        c = self.state[op[S1]:op[S1] + layers * self.capacity * hidden_c]
        return (h.reshape(layers, self.capacity, outputs),
                c.reshape(layers, self.capacity, hidden_c))

    def shapes(self, rows):
        """The shapes of read()'s arrays for `rows` rows."""
        shapes = []
        for entry in self.program.states:
            if entry[0] == "conv":
                shapes.append((rows, entry[2], entry[3]))
            else:
                shapes += [(entry[2], rows, entry[3]), (entry[2], rows, entry[4])]
        return shapes

    def read(self, slots):
        arrays = []
        for entry in self.program.states:
            first, second = self._views(entry)
            if entry[0] == "conv":
                held = entry[2]
                # Oldest input first: a state does not depend on where a ring's position is.
                order = (np.arange(held)[None, :] + second[slots][:, None]) % max(1, held)
                arrays.append(first[slots[:, None], order])
            else:
                arrays += [first[:, slots], second[:, slots]]
        return [np.ascontiguousarray(array) for array in arrays]

    def write(self, slots, arrays):
        position = 0
        for entry in self.program.states:
            first, second = self._views(entry)
            if entry[0] == "conv":
                first[slots] = arrays[position]
                second[slots] = 0
                position += 1
            else:
                first[:, slots] = arrays[position]
                second[:, slots] = arrays[position + 1]
                position += 2

    def reset(self, slots):
        for entry in self.program.states:
            first, second = self._views(entry)
            if entry[0] == "conv":
                first[slots] = 0
                second[slots] = 0
            else:
                first[:, slots] = 0
                second[:, slots] = 0
                if entry[5] is not None:  # a learned start state (Recurrent's initial_state)
                    h0, c0 = entry[5]
                    first[:, slots] = h0[:, None, :]
                    if c0 is not None:
                        second[:, slots] = c0[:, None, :]
