"""bench/registry.py's interleaved rounds as plain tests: the order engines are timed in, the
per-round ratios and the choice of the best peer. (No benchmark fixture here, so `make bench`
with --benchmark-only skips them.)"""

import statistics

import pytest

import registry


def test_rounds_rotate_the_engines_and_time_each_in_every_round():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    times, counts = registry.interleaved_rounds(calls, rounds=4, seconds=0.0)
    assert order == list("abc" "bca" "cab" "abc")
    assert counts == {"a": 1, "b": 1, "c": 1}
    assert all(len(seconds) == 4 and min(seconds) >= 0 for seconds in times.values())


def test_each_round_makes_the_calibrated_number_of_calls(monkeypatch):
    made = {"quick": 0, "slow": 0}
    calls = {name: (lambda name=name: made.__setitem__(name, made[name] + 1)) for name in made}
    assert registry.calls_per_round(calls["quick"], 0.001) >= 1
    made.update(quick=0, slow=0)
    monkeypatch.setattr(registry, "calls_per_round",
                        lambda call, seconds: 5 if call is calls["quick"] else 2)
    monkeypatch.setattr(registry, "TURN_PAUSE", 0.0)
    times, counts = registry.interleaved_rounds(calls, rounds=3, seconds=0.01)
    assert counts == {"quick": 5, "slow": 2}
    assert made == {"quick": 15, "slow": 6}
    assert [len(seconds) for seconds in times.values()] == [3, 3]


def test_ratios_are_medians_of_rounds_and_the_best_peer_is_a_correct_fp32_one():
    times = {"fastrnn": [1.0, 2.0, 4.0], "onnxruntime": [2.0, 2.0, 2.0],
             "openvino": [0.5, 0.5, 0.5], "openvino-bf16": [0.1, 0.1, 0.1],
             "torch": [3.0, 3.0, 30.0]}
    infos = {"fastrnn": {"correct": True}, "onnxruntime": {"correct": True},
             "openvino": {"correct": False},                   # fast but wrong: not the best
             "openvino-bf16": {"correct": True, "precision": "bf16"},   # not float32
             "torch": {"correct": True}}
    fields = registry.compare_rounds(times, infos)
    assert {entry["best_peer"] for entry in fields.values()} == {"onnxruntime"}
    # fastrnn against onnxruntime round by round: 2/1, 2/2, 2/4 -> median 1.0 (medians: 1.0 too,
    # so torch shows the difference: its rounds 3/1, 3/2, 30/4 -> 3.0, its medians 3/2 = 1.5)
    assert fields["fastrnn"]["ratio_to_best_peer"] == 1.0
    assert fields["torch"]["fastrnn_speedup"] == 3.0
    assert fields["onnxruntime"]["fastrnn_speedup"] == 1.0
    assert "fastrnn_speedup" not in fields["fastrnn"]
    assert fields["torch"]["metric"]["value"] == statistics.median(times["torch"])
    assert fields["onnxruntime"]["ratio_to_best_peer"] == 1.0


def test_measured_builds_a_group_once_and_lets_it_go_when_every_engine_asked(monkeypatch):
    builds = []

    def build(engines):
        builds.append(list(engines))
        return {engine: registry.Entrant(lambda: None, {"engine": engine, "correct": True})
                for engine in engines}

    monkeypatch.setattr(registry, "ROUNDS", 2)
    monkeypatch.setattr(registry, "ROUND_SECONDS", 0.001)
    group = "test group (test_bench_registry)"
    engines = ["fastrnn", "fastrnn-variant"]
    first = registry.measured(group, engines, build, enabled=True)
    again = registry.measured(group, engines, build, enabled=True)
    assert builds == [engines] and first is again
    assert first["fastrnn"].info["rounds"] == 2 and first["fastrnn"].info["calls_per_round"] >= 1
    assert "fastrnn_speedup" not in first["fastrnn-variant"].info     # a variant, not a peer
    registry._MEASURED.pop(group)
    # under --benchmark-disable nothing is timed
    untimed = registry.measured(group, engines, build, enabled=False)
    assert "rounds" not in untimed["fastrnn"].info and len(builds) == 2
    registry._MEASURED.pop(group)


def test_an_engine_not_installed_or_without_bf16_is_a_reason_not_a_crash():
    runs, why = registry.bf16_row()
    assert runs == bool(registry.cpu_flags() & {"avx512_bf16", "amx_bf16"})
    reason = registry.unavailable("openvino-bf16")
    if not runs:
        assert reason and "bf16" in reason
    assert registry.unavailable("fastrnn") is None
    with pytest.raises(KeyError):
        registry.build("no-such-engine", registry.ModelSpec("lstm", 1, 1))
