"""Low-bit weights (Model.with_weights): what bfloat16 and int8 matrices buy, and what they cost.

Workloads (groups), each timed in interleaved rounds (registry.measured):

- the streaming step, LSTM B=1 at H=512 and H=1024, with float32, bfloat16 and int8 weights, on
  one core and on all (fastrnn.set_num_threads; a B=1 step runs on the calling thread either way,
  so the two differ only by what the machine's other threads do);
- whole sequences at B=64 with bfloat16 (and int8) weights beside OpenVINO in f32 and with
  INFERENCE_PRECISION_HINT "bf16" (its extra_info "precision" says what OpenVINO reports it ran:
  on a CPU without bf16 instructions it is f32).

Every case records its error beside its time: max_abs_error against the float64 reference of the
original weights, error_vs_float32 against fastrnn's float32 answer, and speedup_vs_float32, the
median over rounds of the float32 case's time / this case's. A low-bit answer counts as correct
within registry.BF16_TOLERANCE (8 bits of mantissa). Nothing here is asserted about speed.
"""

import statistics

import numpy as np
import pytest

from registry import (BF16_TOLERANCE, OPENVINO_FP32, Entrant, ModelSpec, _build_openvino,
                      cpu_count, report_case)

CHECK_STEPS = 16
WEIGHT_FORMATS = {"fastrnn": "float32", "fastrnn-bf16": "bfloat16", "fastrnn-int8": "int8"}
STEP_SPECS = [ModelSpec("lstm", input_size=64, hidden_size=512),
              ModelSpec("lstm", input_size=256, hidden_size=1024)]
STEP_ENGINES = list(WEIGHT_FORMATS)
SEQUENCE_SPEC = ModelSpec("lstm", input_size=64, hidden_size=256, steps=100, batch=64)
OPENVINO_BF16 = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}
SEQUENCE_ENGINES = [*WEIGHT_FORMATS, "openvino", "openvino-hint-bf16"]


def low_bit_model(spec, engine):
    import fastrnn
    return fastrnn.from_torch(spec.torch_module(), batch_first=False).with_weights(
        WEIGHT_FORMATS[engine])


def errors(answer, reference, float32_answer):
    error = float(np.max(np.abs(np.asarray(answer, np.float64) - reference)))
    return {"correct": bool(error <= BF16_TOLERANCE), "max_abs_error": error,
            "error_vs_float32": float(np.max(np.abs(answer - float32_answer)))}


_BUILT = {}   # group -> {engine: Entrant}, kept for the speed-ups of the group's later cases


def record_speedup(benchmark, group, entrant):
    """speedup_vs_float32 of this case: the median over rounds of the float32 case's time / its
    own, from the rounds measured() recorded (absent under --benchmark-disable)."""
    base = _BUILT.get(group, {}).get("fastrnn")
    if isinstance(entrant, Entrant) and base is not None and "round_seconds" in entrant.info:
        benchmark.extra_info["speedup_vs_float32"] = statistics.median(
            b / t for b, t in zip(base.info["round_seconds"], entrant.info["round_seconds"]))


# -- the streaming step --------------------------------------------------------------------------

def step_entrants(spec, engines, threads):
    import fastrnn
    fastrnn.set_num_threads(threads)
    xs = np.random.default_rng(7).standard_normal(
        (CHECK_STEPS, 1, spec.input_size)).astype(np.float32)
    reference = spec.reference(xs)
    float32_answer = None
    built = {}
    for engine in engines:
        stream = low_bit_model(spec, engine).stream(1)
        answer = np.stack([stream.step(x_t).copy() for x_t in xs])
        if float32_answer is None:
            float32_answer = answer  # engines[0] is the float32 case
        stream.reset()
        info = {"engine": engine, "workload": "step", "weights": WEIGHT_FORMATS[engine],
                "threads": threads, **errors(answer, reference, float32_answer), **spec.info()}
        built[engine] = Entrant(lambda step=stream.step, x_t=xs[0]: step(x_t), info, [stream])
    return built


@pytest.mark.parametrize("threads", ["one", "all"])
@pytest.mark.parametrize("engine", STEP_ENGINES)
@pytest.mark.parametrize("spec", STEP_SPECS, ids=lambda s: f"H{s.hidden_size}")
def test_low_bit_step(benchmark, spec, engine, threads):
    count = 1 if threads == "one" else cpu_count()
    group = f"lstm step B=1 I={spec.input_size} H={spec.hidden_size} weights, {threads} core(s)"

    def build(engines):
        _BUILT[group] = step_entrants(spec, engines, count)
        return _BUILT[group]

    try:
        entrant = report_case(benchmark, group, engine, build, STEP_ENGINES, benchmark.enabled)
    finally:
        import fastrnn
        fastrnn.set_num_threads(cpu_count())
    record_speedup(benchmark, group, entrant)


# -- whole sequences, B=64, beside OpenVINO ------------------------------------------------------

def sequence_entrants(spec, engines):
    x = spec.input()
    reference = spec.reference(x)
    built, float32_answer = {}, None
    for engine in engines:
        if engine.startswith("fastrnn"):
            model = low_bit_model(spec, engine)
            answer = model(x)[0]
            call, keep, precision = (lambda model=model: model(x)), [model], "fp32"
            weights = WEIGHT_FORMATS[engine]
        else:
            config = OPENVINO_FP32 if engine == "openvino" else OPENVINO_BF16
            implementation = _build_openvino(spec, engine, config)
            answer = implementation.run_sequence(x)
            call = lambda run=implementation.run_sequence: run(x)  # noqa: E731
            keep, precision = implementation.keep_alive, implementation.precision
            weights = "float32 (runs " + precision + ")"
        if float32_answer is None:
            float32_answer = answer
        info = {"engine": engine, "workload": "sequence", "weights": weights,
                "precision": precision, **errors(answer, reference, float32_answer),
                **spec.info()}
        built[engine] = Entrant(call, info, keep)
    return built


@pytest.mark.parametrize("engine", SEQUENCE_ENGINES)
def test_low_bit_sequence(benchmark, engine):
    spec = SEQUENCE_SPEC
    group = spec.workload_id() + " weights"

    def build(engines):
        _BUILT[group] = sequence_entrants(spec, engines)
        return _BUILT[group]

    entrant = report_case(benchmark, group, engine, build, SEQUENCE_ENGINES, benchmark.enabled)
    record_speedup(benchmark, group, entrant)
