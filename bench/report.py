"""Turn pytest-benchmark's JSON into the README's table and plots.

    python bench/report.py bench/results/latest.json [--out bench/results]

Writes, next to the JSON unless --out says otherwise:
    summary.json             the run without its raw per-round timings (small enough to commit)
    README-table.md          one row per workload (benchmark group): each engine's median, fastrnn's
                             speed-up over each peer, whether every answer was correct, the limit
                             the machine puts on the workload and how close fastrnn comes to it
    latency_vs_hidden.png    per-call step latency against hidden size, one line per engine
    throughput_vs_batch.png  sequence throughput (batch rows x timesteps per second) against batch

Every case follows the convention at the top of bench/registry.py (group = workload, extra_info
with engine, correct, workload, the model's sizes). The machine (CPU, cores, versions) and the
probes of its bandwidth and GEMM rate (bench/probes.py) come from the JSON's machine_info, written
by bench/conftest.py in the run that measured; if absent they are probed now, on this machine.
"""

import argparse
import json
import math
from collections import OrderedDict
from pathlib import Path

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1, "rnn": 1}
WORKLOAD_ORDER = ("step", "pool", "threads", "sequence", "coldstart", "memory")
BASE_ENGINE = "fastrnn"


# -- reading -------------------------------------------------------------------------------------

class Case:
    """One engine's figure on one workload."""

    def __init__(self, benchmark):
        self.group = benchmark.get("group") or benchmark["name"]
        self.info = dict(benchmark.get("extra_info") or {})
        self.engine = self.info.get("engine") or benchmark["name"]
        self.correct = self.info.get("correct")
        metric = self.info.get("metric")
        if metric:
            self.value, self.unit = float(metric["value"]), metric.get("unit", "")
            self.is_time = self.unit == "s"
        else:
            self.value, self.unit, self.is_time = float(benchmark["stats"]["median"]), "s", True
        self.workload = self.info.get("workload", "other")


def read_groups(benchmarks):
    """{group: {engine: Case}}, groups ordered by workload kind, then as they were run."""
    groups = OrderedDict()
    for benchmark in benchmarks:
        case = Case(benchmark)
        groups.setdefault(case.group, OrderedDict())[case.engine] = case
    rank = {name: index for index, name in enumerate(WORKLOAD_ORDER)}

    def order(item):
        workload = next(iter(item[1].values())).workload
        return rank.get(workload, len(rank))

    return OrderedDict(sorted(groups.items(), key=order))


def engine_order(engines):
    """fastrnn first, its variants next, then the peers in their usual order, then the rest."""
    usual = {"fastrnn": 0, "torch": 2, "onnxruntime": 3, "openvino": 4, "openvino-bf16": 5}

    def key(engine):
        if engine in usual:
            return (usual[engine], engine)
        return (1 if engine.startswith("fastrnn") else 6, engine)

    return sorted(engines, key=key)


def on_gpu(engine):
    return "cuda" in engine or "cudnn" in engine


def comparisons(engines):
    """[(fastrnn engine, peer)]: each peer against fastrnn on the same device."""
    pairs = []
    for peer in engines:
        if peer.startswith("fastrnn"):
            continue
        base = "fastrnn-cuda" if on_gpu(peer) else BASE_ENGINE
        if base in engines:
            pairs.append((base, peer))
    return pairs


def speedup(cases, base, peer):
    """base's speed-up over peer (> 1: base is faster): the median of the per-round ratios where
    the two were timed in interleaved rounds (registry.measured), else the ratio of medians."""
    if base == BASE_ENGINE and "fastrnn_speedup" in cases[peer].info:
        return cases[peer].info["fastrnn_speedup"]
    return cases[peer].value / cases[base].value if cases[base].value > 0 else None


def best_peer(cases):
    """'peer: ratio' of fastrnn against the fastest float32 peer with a correct answer, measured
    in the same interleaved rounds; '' where the group has none."""
    info = cases[BASE_ENGINE].info if BASE_ENGINE in cases else {}
    if "best_peer" not in info or "ratio_to_best_peer" not in info:
        return ""
    return f"{format_ratio(info['ratio_to_best_peer'])} ({info['best_peer']})"


# -- the limit -----------------------------------------------------------------------------------

def layer_sizes(info):
    """[(input width, hidden size)] per layer-direction of the model in `info`."""
    hidden, directions = info["hidden_size"], 2 if info.get("bidirectional") else 1
    sizes = []
    for layer in range(info.get("num_layers", 1)):
        width = info["input_size"] if layer == 0 else directions * hidden
        sizes += [(width, hidden)] * directions
    return sizes


def limit(info, probes):
    """(seconds, what bounds it) the machine allows for the workload in `info`, or None.

    Per-step workloads (step, pool, threads): every weight of the stack is read once per timestep,
      and each row's input, output and state (h, and c for an LSTM, per layer-direction) read or
      written once (a pool's state table is what grows with its streams), at the read bandwidth
      all cores reach together on a working set of that size, each core reading its share from
      its own cache (weights stay in cache between calls when they fit).
    Sequences (sequence, chunk): the input projection is one GEMM, so the recurrence reads each
      layer-direction's W_hh once per timestep, one after the other, at the all-cores bandwidth
      for that working set.
    (Probes of an older run have no all-cores curve: one core's is used then.)
    Either way the flops at the GEMM rate bound it too; the larger of the two is the limit.
    The timesteps of one call are steps_per_call, samples_per_call or steps; the rows are streams
    or batch.
    """
    from probes import bandwidth_at
    kind, workload = info.get("kind"), info.get("workload")
    per_step = workload in ("step", "pool", "threads")
    if kind not in GATES or "hidden_size" not in info or not (
            per_step or workload in ("sequence", "chunk")):
        return None
    gates, itemsize = GATES[kind], 4
    steps = info.get("steps_per_call") or info.get("samples_per_call") or info.get("steps", 1)
    rows = info.get("streams") or info.get("batch", 1)
    curve = probes.get("read_bandwidth_all_cores_bytes_per_s") or probes["read_bandwidth_bytes_per_s"]
    gemm = probes["gemm_flops_per_s"]
    sizes = layer_sizes(info)
    flops = sum(2 * gates * hidden * (width + hidden) for width, hidden in sizes) * steps * rows
    compute = flops / gemm
    if per_step:
        weights = sum(gates * hidden * (width + hidden + 2) * itemsize for width, hidden in sizes)
        states = 2 if kind == "lstm" else 1                  # h, and c for an LSTM
        output = (2 if info.get("bidirectional") else 1) * info["hidden_size"]
        per_row = (info["input_size"] + output
                   + sum(2 * states * hidden for _, hidden in sizes)) * itemsize
        nbytes = weights + rows * per_row
        memory = steps * nbytes / bandwidth_at(curve, nbytes)
        what = (f"{format_bytes(weights)} weight reads" if rows * per_row < weights / 10 else
                f"{format_bytes(weights)} weights + {format_bytes(rows * per_row)} rows")
    else:
        recurrent = [gates * hidden * (hidden + 1) * itemsize for _, hidden in sizes]
        memory = steps * sum(nbytes / bandwidth_at(curve, nbytes) for nbytes in recurrent)
        what = "W_hh reads"
    if memory >= compute:
        return memory, what
    return compute, "GEMM rate"


# -- formatting ----------------------------------------------------------------------------------

def format_seconds(seconds):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if seconds >= scale or unit == "ns":
            value = seconds / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"


def format_bytes(nbytes):
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.0f} B"


def format_value(case):
    if case.is_time:
        return format_seconds(case.value)
    return f"{case.value:.3g} {case.unit}"


def format_ratio(ratio):
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.0f}x"


# -- the table -----------------------------------------------------------------------------------

def table(groups, probes):
    """Markdown: one table per kind of workload, one row per workload."""
    by_workload = OrderedDict()
    for group, cases in groups.items():
        by_workload.setdefault(next(iter(cases.values())).workload, []).append((group, cases))
    lines = []
    for workload, rows in by_workload.items():
        engines = engine_order({engine for _, cases in rows for engine in cases})
        pairs = comparisons(engines)
        with_limit = (BASE_ENGINE in engines and
                      any(limit(next(iter(cases.values())).info, probes) for _, cases in rows))
        header = ["workload"] + engines + [f"{base} vs {peer}" for base, peer in pairs]
        with_best = any(best_peer(cases) for _, cases in rows)
        header += [f"{BASE_ENGINE} vs best peer"] if with_best else []
        header += ["correct"]
        header += ["limit", f"{BASE_ENGINE} vs limit"] if with_limit else []
        lines += [f"### {workload}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        for group, cases in rows:
            row = [group] + [format_value(cases[e]) if e in cases else "" for e in engines]
            for base, peer in pairs:
                ratio = speedup(cases, base, peer) if base in cases and peer in cases else None
                row.append(format_ratio(ratio) if ratio is not None else "")
            if with_best:
                row.append(best_peer(cases))
            wrong = [e for e in engine_order(cases) if cases[e].correct is False]
            unchecked = [e for e in engine_order(cases) if cases[e].correct is None]
            row.append("no: " + ", ".join(wrong) if wrong else
                       "yes" + (f" (not checked: {', '.join(unchecked)})" if unchecked else ""))
            if with_limit:
                bound = limit(next(iter(cases.values())).info, probes)
                if bound and BASE_ENGINE in cases:
                    seconds, what = bound
                    share = seconds / cases[BASE_ENGINE].value
                    row += [f"{format_seconds(seconds)} ({what})",
                            f"{100 * share:.0f}% of limit" + (" (probe slowed?)" if share > 1
                                                              else "")]
                else:
                    row += ["", ""]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines += memory_details(rows)
    lines += [
        "Medians of the run (coldstart: from starting a fresh process to its first answer; "
        "memory: peak resident memory the loaded model and its first answer add to a fresh "
        "process). Where a workload's engines were timed in interleaved rounds (each round "
        "times every engine in turn for a few calls, the order rotated each round), the figure "
        "is the median over the rounds of the seconds per call, and `A vs B` is the median over "
        "the rounds of B's time / A's in the same round; elsewhere `A vs B` is B's figure over "
        "A's. Above 1 A is faster (or smaller). `vs best peer`: against the fastest peer whose "
        "answer was correct at float32 (a bf16 row is never that peer). `correct`: every "
        "engine's answer was checked against a float64 torch run of "
        "the same weights (float32 within 3e-5; an engine running bf16 within 5e-2) before it "
        "was timed. `limit`: the least time the "
        "machine allows (bench/probes.py, all cores' read bandwidth together at the weights' "
        "working-set size, all cores' float32 GEMM rate); `% of limit` is limit / fastrnn's "
        "median, 100% would be at the limit (above 100%, other load slowed the probes more than "
        "the case).",
        ""]
    return "\n".join(lines)


def memory_details(rows):
    """For memory workloads: each engine's import footprint, what loading adds, the whole peak."""
    lines = []
    for group, cases in rows:
        parts = [f"{engine}: import {cases[engine].info['rss_after_import_MiB']:.0f} MiB, "
                 f"model loaded +{cases[engine].info['load_MiB']:.0f} MiB, process peak "
                 f"{cases[engine].info['peak_rss_MiB']:.0f} MiB"
                 for engine in engine_order(cases)
                 if {"rss_after_import_MiB", "load_MiB", "peak_rss_MiB"} <= set(cases[engine].info)]
        if parts:
            weights = next(iter(cases.values())).info.get("weights_MiB")
            about = f" (weights {weights:.0f} MiB)" if weights else ""
            lines += [f"{group}{about}: " + "; ".join(parts) + ".", ""]
    return lines


def machine_section(machine, probes, probed_now, benchmark_json):
    bench = machine.get("fastrnn_bench", {})
    versions = bench.get("versions", {})
    def bandwidths(key):
        curve = {int(size): rate for size, rate in probes.get(key, {}).items()}
        shown = [size for size in (16 * 2 ** 10, 256 * 2 ** 10, 4 * 2 ** 20, 64 * 2 ** 20)
                 if size in curve]
        return ", ".join(f"{format_bytes(size)}: {curve[size] / 1e9:.0f} GB/s" for size in shown)

    bandwidth = bandwidths("read_bandwidth_bytes_per_s")
    all_cores = bandwidths("read_bandwidth_all_cores_bytes_per_s")
    load = bench.get("load_average")
    lines_blas = []
    for library in bench.get("blas") or []:
        if isinstance(library, dict) and library.get("user_api") == "blas":
            lines_blas.append(
                f"{'numpy: ' if library.get('numpy') else ''}{library.get('internal_api')} "
                f"{library.get('version') or ''} ({library.get('prefix')}), kernels "
                f"{library.get('architecture')}, {library.get('num_threads')} threads")
    environment = bench.get("openblas_environment")
    if environment is not None:
        set_ones = [f"{name}={value}" for name, value in environment.items() if value is not None]
        lines_blas.append("OpenBLAS environment in the run: " + (", ".join(set_ones) if set_ones
                                                                   else "none of "
                                                                   + ", ".join(environment)
                                                                   + " set"))
    lines = [
        "## Machine",
        "",
        f"- CPU: {bench.get('cpu_model') or machine.get('cpu', {}).get('brand_raw', '?')}, "
        f"{bench.get('cores', '?')} cores ({machine.get('machine', '?')}, "
        f"{machine.get('system', '?')} {machine.get('release', '')})",
        *([f"- CPU flags: {', '.join(bench['cpu_flags'])}"
           + ("" if "avx512f" in bench["cpu_flags"] else " (no AVX-512)")]
          if "cpu_flags" in bench else []),
        "- versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()
                                    if version),
        *([f"- BLAS: {'; '.join(lines_blas)}"] if lines_blas else []),
        *([f"- OpenVINO bf16 row (its default precision): {bench['openvino_bf16_row']}"]
          if bench.get("openvino_bf16_row") else []),
        f"- one core's read bandwidth by working set: {bandwidth}",
        *([f"- all {probes.get('cores', '?')} cores' read bandwidth together, by total working "
           f"set: {all_cores}"] if all_cores else []),
        f"- float32 GEMM (numpy matmul 1024^3, all cores): "
        f"{probes['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s"
        + (" (probed when this report was written, not in the benchmark run)" if probed_now else ""),
        f"- run: {benchmark_json.get('datetime', '?')}"
        + (f", load average at its end {', '.join(f'{x:.2f}' for x in load)}" if load else ""),
        "",
        "The machine is shared, so figures are noisy: compare engines within one run (they were "
        "measured side by side), not absolute times across runs.",
        "",
    ]
    return "\n".join(lines)


# -- the plots -----------------------------------------------------------------------------------

def _kinds(cases_by_group):
    order = {kind: index for index, kind in enumerate(GATES)}
    return sorted({case.info.get("kind", "?") for cases in cases_by_group.values()
                   for case in cases.values()}, key=lambda kind: (order.get(kind, 99), kind))


def mark_wrong(axis, points):
    """A black cross over each point whose answer did not match the reference."""
    if points:
        shown = "wrong answer" in axis.get_legend_handles_labels()[1]
        axis.scatter([p[0] for p in points], [p[1] for p in points], marker="x", s=120,
                     color="black", zorder=5, label="_nolegend_" if shown else "wrong answer")


def one_case_per_point(groups, kind, axis_key):
    """[(engine, case)] of `kind`, one per engine and value of `axis_key`.

    Where several groups land on one point (another suite timing the same sizes), the case from
    the group that compares the most engines is kept.
    """
    chosen = {}
    for cases in groups.values():
        for engine, case in cases.items():
            if case.info.get("kind") != kind or not case.is_time or axis_key not in case.info:
                continue
            point = (engine, case.info[axis_key])
            if point not in chosen or len(cases) > chosen[point][0]:
                chosen[point] = (len(cases), case)
    return [(engine, case) for (engine, _), (_, case) in chosen.items()]


def plot_latency_vs_hidden(groups, path, title):
    """Per-call step latency against hidden size, one line per engine, one panel per cell kind."""
    steps = {group: cases for group, cases in groups.items()
             if next(iter(cases.values())).workload == "step"}
    if not steps:
        return False
    import matplotlib.pyplot as plt
    kinds = _kinds(steps)
    figure, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
    for axis, kind in zip(axes[0], kinds):
        lines = {}
        for engine, case in one_case_per_point(steps, kind, "hidden_size"):
            lines.setdefault(engine, []).append(
                (case.info["hidden_size"], case.info.get("input_size"), case.value * 1e6,
                 case.correct is False))
        for engine in engine_order(lines):
            points = sorted(lines[engine])
            axis.plot([p[0] for p in points], [p[2] for p in points], marker="o", label=engine)
            mark_wrong(axis, [(p[0], p[2]) for p in points if p[3]])
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("hidden size H (input size I in the labels)")
        axis.set_ylabel("latency per call (us, median)")
        axis.set_title(f"{kind.upper()} one step per call, B=1")
        ticks = sorted({(p[0], p[1]) for points in lines.values() for p in points})
        axis.set_xticks([h for h, _ in ticks])
        axis.set_xticklabels([f"{h}\n(I={i})" for h, i in ticks])
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def plot_throughput_vs_batch(groups, path, title):
    """Sequence throughput (rows x timesteps per second) against batch, one line per engine."""
    sequences = {group: cases for group, cases in groups.items()
                 if next(iter(cases.values())).workload == "sequence"}
    if not sequences:
        return False
    import matplotlib.pyplot as plt
    kinds = _kinds(sequences)
    figure, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
    for axis, kind in zip(axes[0], kinds):
        lines, labels = {}, {}
        for engine, case in one_case_per_point(sequences, kind, "batch"):
            info = case.info
            rate = info["batch"] * info["steps"] / case.value
            lines.setdefault(engine, []).append((info["batch"], rate, case.correct is False))
            label = f"T={info['steps']}\nH={info['hidden_size']}"
            if info.get("num_layers", 1) > 1:
                label += f"\nL={info['num_layers']}"
            if info.get("bidirectional"):
                label += "\nbidir"
            labels[info["batch"]] = label
        for engine in engine_order(lines):
            points = sorted(lines[engine])
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=engine)
            mark_wrong(axis, [(p[0], p[1]) for p in points if p[2]])
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(sorted(labels))
        axis.set_xticklabels([f"B={b}\n{labels[b]}" for b in sorted(labels)], fontsize=7)
        axis.set_ylabel("throughput (rows x timesteps / s, median)")
        axis.set_title(f"{kind.upper()} whole sequences")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def summary(data):
    """The run without each round's raw timings (megabytes): what the table and plots need, small
    enough to commit beside them (bench/report.py reads it as it reads the full JSON)."""
    trimmed = dict(data)
    trimmed["benchmarks"] = [
        {**benchmark, "stats": {key: value for key, value in benchmark["stats"].items()
                                if key != "data"}}
        for benchmark in data.get("benchmarks", [])]
    return trimmed


# -- main ----------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="pytest-benchmark --benchmark-json output")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the table and plots (default: the JSON's folder)")
    arguments = parser.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")

    data = json.loads(arguments.json.read_text())
    out = arguments.out or arguments.json.parent
    out.mkdir(parents=True, exist_ok=True)
    groups = read_groups(data.get("benchmarks", []))
    if not groups:
        raise SystemExit(f"{arguments.json} holds no benchmarks")
    machine = data.get("machine_info", {})
    probes = machine.get("fastrnn_bench", {}).get("probes")
    probed_now = probes is None
    if probed_now:
        import probes as probe_module
        probes = probe_module.measure()

    bench = machine.get("fastrnn_bench", {})
    title = (f"{bench.get('cpu_model', '?')}, {bench.get('cores', '?')} cores; "
             f"{data.get('datetime', '')[:16]}")
    plots = []
    if plot_latency_vs_hidden(groups, out / "latency_vs_hidden.png", title):
        plots.append(("Per-call step latency against hidden size", "latency_vs_hidden.png"))
    if plot_throughput_vs_batch(groups, out / "throughput_vs_batch.png", title):
        plots.append(("Sequence throughput against batch", "throughput_vs_batch.png"))

    text = ["# Benchmarks", "",
            f"Written by `bench/report.py` from `{arguments.json.name}` (`make bench`).", "",
            machine_section(machine, probes, probed_now, data),
            "## Results", "", table(groups, probes)]
    for caption, name in plots:
        text += [f"![{caption}]({name})", ""]
    (out / "README-table.md").write_text("\n".join(text))
    (out / "summary.json").write_text(json.dumps(summary(data), indent=1))
    print((out / "README-table.md").read_text())
    for _, name in plots:
        print(f"wrote {out / name}")


if __name__ == "__main__":
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    main()
