"""bench/report.py and bench/probes.py as plain tests: the table's ratios, correctness column and
limits come from the JSON's figures, and the plots are written. (No benchmark fixture here, so
`make bench` with --benchmark-only skips them.)"""

import json

import numpy as np
import pytest

import probes
import report

# A bandwidth curve and GEMM rate as probes.measure() writes them, with round figures so the
# expected limits can be worked out by hand.
PROBES = {"read_bandwidth_bytes_per_s": {"65536": 100e9, "1048576": 50e9, "134217728": 10e9},
          "gemm_flops_per_s": 100e9}


def case(group, engine, median, workload, correct=True, **info):
    return {"group": group, "name": f"test[{group}-{engine}]", "stats": {"median": median, "data": [median] * 3},
            "extra_info": {"engine": engine, "correct": correct, "workload": workload, **info}}


def write_run(path):
    step = dict(kind="lstm", input_size=64, hidden_size=128, num_layers=1, bidirectional=False,
                batch=1, steps=1)
    small = dict(step, input_size=1, hidden_size=32)
    sequence = dict(kind="gru", input_size=64, hidden_size=128, num_layers=1,
                    bidirectional=False, batch=1, steps=1000)
    benchmarks = [
        case("lstm step H=128", "fastrnn", 20e-6, "step", **step),
        case("lstm step H=128", "torch", 80e-6, "step", **step),
        case("lstm step H=128", "onnxruntime", 60e-6, "step", correct=False, **step),
        case("lstm step H=128", "fastrnn-cuda", 30e-6, "step", **step),
        case("lstm step H=128", "torch-cudnn", 90e-6, "step", **step),
        case("lstm step H=32", "fastrnn", 4e-6, "step", **small),
        case("lstm step H=32", "onnxruntime", 40e-6, "step", **small),
        case("lstm pool", "fastrnn", 1e-3, "pool", **dict(step, streams=256)),
        case("lstm pool", "torch", 2e-3, "pool", **dict(step, streams=256)),
        case("gru seq", "fastrnn", 10e-3, "sequence", **sequence),
        case("gru seq", "torch", 15e-3, "sequence", **sequence),
        case("gru memory", "fastrnn", 2.0, "memory",
             metric={"name": "peak RSS", "value": 30.0, "unit": "MiB"}),
        case("gru memory", "torch", 3.0, "memory",
             metric={"name": "peak RSS", "value": 60.0, "unit": "MiB"}),
    ]
    run = {"datetime": "2026-01-01T00:00:00", "benchmarks": benchmarks,
           "machine_info": {"fastrnn_bench": {"cpu_model": "Test CPU", "cores": 2,
                                              "versions": {"numpy": np.__version__},
                                              "probes": PROBES}}}
    path.write_text(json.dumps(run))


def read_tables(text):
    """{workload row name: {column header: cell}} from every table in the Markdown."""
    rows, header = {}, None
    for line in text.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            header = None if not line.startswith("|") else header
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == "workload":
            header = cells
        else:
            rows[cells[0]] = dict(zip(header, cells))
    return rows


def test_report_table_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")      # the bench extra; make test installs it
    write_run(tmp_path / "run.json")
    report.main([str(tmp_path / "run.json")])
    text = (tmp_path / "README-table.md").read_text()
    rows = read_tables(text)
    step = rows["lstm step H=128"]
    assert [step[e] for e in ("fastrnn", "torch", "onnxruntime")] == ["20 us", "80 us", "60 us"]
    assert step["fastrnn vs torch"] == "4.00x" and step["fastrnn vs onnxruntime"] == "3.00x"
    # each device's peers against fastrnn on the same device
    assert step["fastrnn-cuda vs torch-cudnn"] == "3.00x"
    assert "fastrnn vs torch-cudnn" not in step
    assert step["correct"] == "no: onnxruntime"
    # weights 4*128*(64+128+2)*4 bytes = 397312 B, and the row's x, y, h and c read or written
    # (64+128+2*2*128)*4 = 2816 B: 400128 B read at 100 GB/s (the 64 KiB point, the next size
    # down) = 4.00 us
    assert step["limit"] == "4 us (388 KiB weight reads)"
    assert step["fastrnn vs limit"] == "20% of limit"
    small = rows["lstm step H=32"]
    assert small["torch"] == "" and small["fastrnn vs onnxruntime"] == "10x"
    assert small["correct"] == "yes"
    # 256 streams: 397312 B read once per call (3.97 us) against
    # 2*512*192*256 = 50.3 MFLOP at 100 GFLOP/s = 503 us: the GEMM rate bounds it.
    assert rows["lstm pool"]["limit"] == "503 us (GEMM rate)"
    # W_hh 3*128*129*4 = 198144 B per step at 100 GB/s, 1000 steps = 1.98 ms;
    # flops 2*384*192*1000 = 147 MFLOP at 100 GFLOP/s = 1.47 ms: the reads bound it.
    sequence = rows["gru seq"]
    assert sequence["fastrnn vs torch"] == "1.50x"
    assert sequence["limit"] == "1.98 ms (W_hh reads)"
    assert sequence["fastrnn vs limit"] == "20% of limit"
    memory = rows["gru memory"]
    assert (memory["fastrnn"], memory["torch"], memory["fastrnn vs torch"]) == (
        "30 MiB", "60 MiB", "2.00x")
    assert "limit" not in memory
    assert "Test CPU, 2 cores" in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert all(b["stats"] == {"median": b["stats"]["median"]} for b in summary["benchmarks"])
    for name in ("latency_vs_hidden.png", "throughput_vs_batch.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_refuses_an_empty_run(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"benchmarks": [], "machine_info": {}}))
    with pytest.raises(SystemExit, match="no benchmarks"):
        report.main([str(tmp_path / "run.json")])


def test_bandwidth_curve_lookup_takes_the_next_size_down():
    curve = PROBES["read_bandwidth_bytes_per_s"]
    assert probes.bandwidth_at(curve, 1000) == 100e9
    assert probes.bandwidth_at(curve, 1048575) == 100e9
    assert probes.bandwidth_at(curve, 1048576) == 50e9
    assert probes.bandwidth_at(curve, 2 ** 40) == 10e9


def test_read_bandwidth_probe_measures_something_plausible():
    rate = probes.read_bandwidth(64 * 1024, seconds=0.005, repeats=2)
    assert 1e8 < rate < 1e13          # 0.1 GB/s .. 10 TB/s: a number of bytes per second


def test_best_of_keeps_each_probes_highest_figure():
    slowed = {"read_bandwidth_bytes_per_s": {"65536": 40e9, "1048576": 60e9},
              "gemm_flops_per_s": 20e9}
    best = probes.best_of(PROBES, slowed, None)
    assert best["read_bandwidth_bytes_per_s"] == {"65536": 100e9, "1048576": 60e9,
                                                  "134217728": 10e9}
    assert best["gemm_flops_per_s"] == 100e9


def test_plots_keep_one_point_per_engine_and_size():
    step = dict(kind="lstm", input_size=64, hidden_size=128, workload="step")
    full = {"fastrnn": report.Case(case("g1", "fastrnn", 20e-6, **step)),
            "torch": report.Case(case("g1", "torch", 80e-6, **step)),
            "onnxruntime": report.Case(case("g1", "onnxruntime", 60e-6, **step))}
    other_suite = {"fastrnn": report.Case(case("g2", "fastrnn", 30e-6, **step)),
                   "onnxruntime": report.Case(case("g2", "onnxruntime", 70e-6, **step))}
    points = report.one_case_per_point({"g2": other_suite, "g1": full}, "lstm", "hidden_size")
    assert sorted((engine, c.value) for engine, c in points) == [
        ("fastrnn", 20e-6), ("onnxruntime", 60e-6), ("torch", 80e-6)]


def test_limit_reads_at_all_cores_bandwidth_when_probed():
    """Two cores read a step's weights at once (each its share from its own cache): the limit
    takes the all-cores curve where the probes have it, one core's in an older run's probes."""
    info = dict(kind="lstm", input_size=64, hidden_size=128, num_layers=1, bidirectional=False,
                batch=1, steps=1, workload="step")
    both = dict(PROBES, read_bandwidth_all_cores_bytes_per_s={"65536": 200e9}, cores=2)
    # the same 400128 B as test_report_table's step, at 200 GB/s
    assert report.limit(info, both) == pytest.approx((400128 / 200e9, "388 KiB weight reads"))
    assert report.limit(info, PROBES)[0] == pytest.approx(400128 / 100e9)


def test_all_cores_probe_reads_from_every_core():
    rate = probes.read_bandwidth(64 * 1024, cores=2, seconds=0.005, repeats=2)
    assert 1e8 < rate < 1e13
    best = probes.best_of(PROBES, {"read_bandwidth_all_cores_bytes_per_s": {"65536": 150e9},
                                   "cores": 2, "gemm_flops_per_s": 1e9})
    assert best["read_bandwidth_all_cores_bytes_per_s"] == {"65536": 150e9}
    assert best["cores"] == 2


def test_interleaved_ratios_and_the_best_peer(tmp_path):
    """Interleaved cases: the ratio columns are the per-round medians the cases carry (not the
    ratio of the medians), and fastrnn's ratio to its best peer gets a column."""
    pytest.importorskip("matplotlib")
    sequence = dict(kind="lstm", input_size=256, hidden_size=256, num_layers=1,
                    bidirectional=False, batch=64, steps=100)

    def interleaved(engine, median, **fields):
        return case("lstm seq B=64", engine, 1.0, "sequence", **sequence,
                    metric={"name": "median over interleaved rounds, per call", "value": median,
                            "unit": "s"}, method="interleaved rounds", **fields)

    run = {"datetime": "2026-01-01T00:00:00", "benchmarks": [
        interleaved("fastrnn", 30e-3, best_peer="openvino", ratio_to_best_peer=0.55),
        interleaved("onnxruntime", 40e-3, fastrnn_speedup=1.25, best_peer="openvino",
                    ratio_to_best_peer=0.4),
        interleaved("openvino", 15e-3, fastrnn_speedup=0.55, best_peer="openvino",
                    ratio_to_best_peer=1.0)],
        "machine_info": {"fastrnn_bench": {
            "cpu_model": "Test CPU", "cores": 2, "cpu_flags": ["avx", "avx2", "fma"],
            "blas": [{"user_api": "blas", "internal_api": "openblas", "prefix": "libopenblas",
                      "version": "0.3", "architecture": "Haswell", "num_threads": 2,
                      "numpy": True}],
            "openblas_environment": {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None},
            "openvino_bf16_row": "not run: no bf16 here", "probes": PROBES}}}
    (tmp_path / "run.json").write_text(json.dumps(run))
    report.main([str(tmp_path / "run.json")])
    text = (tmp_path / "README-table.md").read_text()
    row = read_tables(text)["lstm seq B=64"]
    assert (row["fastrnn"], row["onnxruntime"], row["openvino"]) == ("30 ms", "40 ms", "15 ms")
    # 40/30 would be 1.33x: the per-round median 1.25 is shown instead
    assert row["fastrnn vs onnxruntime"] == "1.25x"
    assert row["fastrnn vs openvino"] == "0.55x"
    assert row["fastrnn vs best peer"] == "0.55x (openvino)"
    assert "CPU flags: avx, avx2, fma (no AVX-512)" in text
    assert "numpy: openblas 0.3 (libopenblas), kernels Haswell, 2 threads" in text
    assert "none of OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE set" in text
    assert "OpenVINO bf16 row (its default precision): not run: no bf16 here" in text


def test_pool_limit_counts_the_state_table():
    """A pool tick reads and writes each stream's x, y, h and c besides the weights: with many
    streams that traffic, not the weights, is what the memory side of the limit reads."""
    info = dict(kind="lstm", input_size=64, hidden_size=128, num_layers=1, bidirectional=False,
                batch=1, steps=1, workload="pool", streams=4096)
    # 2*512*192*4096 = 805 MFLOP at 100 GFLOP/s = 8.05 ms; memory 397312 + 4096*2816 B =
    # 11.9 MB at 50 GB/s (the 1 MiB point) = 239 us: the GEMM rate bounds it
    assert report.limit(info, PROBES) == pytest.approx((805306368 / 100e9, "GEMM rate"))
    fast_gemm = dict(PROBES, gemm_flops_per_s=1e15)
    assert report.limit(info, fast_gemm) == pytest.approx(
        (11931648 / 50e9, "388 KiB weights + 11 MiB rows"))
