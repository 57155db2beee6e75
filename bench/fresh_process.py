"""One engine's first answer in a fresh process: import, load a saved model, run one input.

    python bench/fresh_process.py ENGINE FOLDER OUTPUT.npy

FOLDER is what registry.write_saved_models wrote (model.fastrnn, model.pt, model.onnx, spec.json,
x.npy). One JSON line on stdout, printed as soon as the answer is there, gives the seconds each
stage took and the process's resident memory after each, read from /proc/self/status (VmRSS now,
VmHWM the peak so far); then the answer goes to OUTPUT.npy (the parent checks it).
"""

import time

_START = time.perf_counter()

import json  # noqa: E402  (after the clock starts: the imports are part of what is measured)
import sys  # noqa: E402


def _memory():
    """(resident bytes now, peak resident bytes so far) of this process."""
    fields = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    fields[name] = int(value.split()[0]) * 1024
    except OSError:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return peak, peak
    return fields["VmRSS"], fields["VmHWM"]


def _run_fastrnn(folder, marks):
    import numpy as np
    import fastrnn
    marks.append(("import", time.perf_counter(), _memory()))
    model = fastrnn.load(f"{folder}/model.fastrnn")
    x = np.load(f"{folder}/x.npy")
    marks.append(("load", time.perf_counter(), _memory()))
    y, _ = model(x)
    return y


def _run_torch(folder, marks):
    import numpy as np
    import torch
    marks.append(("import", time.perf_counter(), _memory()))
    with open(f"{folder}/spec.json") as file:
        spec = json.load(file)
    cls = torch.nn.LSTM if spec["kind"] == "lstm" else torch.nn.GRU
    module = cls(spec["input_size"], spec["hidden_size"], num_layers=spec["num_layers"],
                 bidirectional=spec["bidirectional"])
    module.load_state_dict(torch.load(f"{folder}/model.pt", weights_only=True))
    module.eval()
    x = np.load(f"{folder}/x.npy")
    marks.append(("load", time.perf_counter(), _memory()))
    with torch.no_grad():
        y, _ = module(torch.from_numpy(x))
    return y.numpy()


def _run_onnxruntime(folder, marks):
    import numpy as np
    import onnxruntime
    marks.append(("import", time.perf_counter(), _memory()))
    session = onnxruntime.InferenceSession(f"{folder}/model.onnx",
                                           providers=["CPUExecutionProvider"])
    x = np.load(f"{folder}/x.npy")
    marks.append(("load", time.perf_counter(), _memory()))
    return session.run(["y"], {"x": x})[0]


RUNNERS = {"fastrnn": _run_fastrnn, "torch": _run_torch, "onnxruntime": _run_onnxruntime}


def main(engine, folder, output):
    if engine not in RUNNERS:
        raise SystemExit(f"engine must be one of {tuple(RUNNERS)}, got {engine!r}")
    marks = [("start", _START, _memory())]
    y = RUNNERS[engine](folder, marks)
    marks.append(("first_answer", time.perf_counter(), _memory()))
    report = {"engine": engine}
    for (_, before, _), (stage, after, (rss, peak)) in zip(marks, marks[1:]):
        report[f"{stage}_s"] = after - before
        report[f"rss_after_{stage}"] = rss
        report[f"peak_rss_after_{stage}"] = peak
    report["total_s"] = marks[-1][1] - _START
    # The parent stops its clock at this line: saving the answer and the process's exit are
    # not part of the time to the first answer.
    print(json.dumps(report), flush=True)
    import numpy as np
    np.save(output, y)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
