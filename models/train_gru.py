"""Trains meshtune's GRU load forecaster and exports it to ONNX.

    python3 -m pip install -r models/requirements.txt
    python3 models/train_gru.py            # writes models/gru.onnx, gru_torch.onnx, gru.json, gru_check.json
                                           # (~3 minutes on 2 cores)

Input: 60 minutes of requests/s with time-of-day and day-of-week encodings;
output: the next 10 minutes. Values are log1p-scaled and centred on the
window's own mean, so one model serves chains of any size; that
normalisation travels with the model in gru.json. Trained on the first 70 %
(chronological) of each trace in ../shared/data/traces/ listed below; the
rest is never seen in training and is what `meshtune-agent forecast-eval`
scores. Fixed seed; CPU only.
"""
import hashlib, json, math, os, sys
import numpy as np
import torch
import onnx
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
TRACES = os.path.join(HERE, "..", "..", "shared", "data", "traces")
FILES = ["worldcup98_1min.csv", "alibaba-ms2021-6d9c26b9_1min.csv"]
IN, OUT, FEATURES, TRAIN_FRACTION, SEED = 60, 10, 5, 0.7, 0

def parse_ts(s):
    import datetime
    return int(datetime.datetime.strptime(s.strip(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp())

def read(path):
    """Requests/s per minute (missing minutes: the previous value) and the first minute index."""
    rows = [l.strip().split(",") for l in open(path).read().splitlines()[1:] if l.strip()]
    per_min = {}
    for ts, n in rows:
        m = parse_ts(ts) // 60
        per_min[m] = per_min.get(m, 0.0) + float(n)
    first, last = min(per_min), max(per_min)
    vals, prev = [], 0.0
    for m in range(first, last + 1):
        v = per_min.get(m)
        prev = prev if v is None else v / 60.0
        vals.append(prev)
    return first, np.array(vals, dtype=np.float64)

def features(first_minute, vals, start):
    """The model input for the window vals[start:start+IN] (must match agent/src/forecast/gru.rs)."""
    w = np.log1p(np.maximum(vals[start:start + IN], 0.0))
    m = w.mean()
    minutes = first_minute + start + np.arange(IN)
    tod = 2 * math.pi * (minutes % 1440) / 1440.0
    dow = 2 * math.pi * ((minutes // 1440 + 4) % 7) / 7.0  # 1970-01-01 was a Thursday
    x = np.stack([w - m, np.sin(tod), np.cos(tod), np.sin(dow), np.cos(dow)], axis=1)
    return x.astype(np.float32), m

def windows(first, vals, lo, hi, stride):
    xs, ys = [], []
    for s in range(lo, hi - IN - OUT, stride):
        x, m = features(first, vals, s)
        y = np.log1p(np.maximum(vals[s + IN:s + IN + OUT], 0.0)) - m
        xs.append(x); ys.append(y.astype(np.float32))
    return np.array(xs), np.array(ys)

class Gru(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(FEATURES, 32, batch_first=True)
        self.head = torch.nn.Linear(32, OUT)
    def forward(self, x):
        _, h = self.gru(x)
        return self.head(h[-1])

def main():
    torch.manual_seed(SEED); np.random.seed(SEED)
    torch.set_num_threads(2)
    xs, ys, shas, splits = [], [], {}, {}
    for f in FILES:
        p = os.path.join(TRACES, f)
        shas[f] = hashlib.sha256(open(p, "rb").read()).hexdigest()
        first, vals = read(p)
        split = int(len(vals) * TRAIN_FRACTION)
        splits[f] = {"minutes": len(vals), "train_minutes": split}
        x, y = windows(first, vals, 0, split, 3 if len(vals) > 10000 else 1)
        xs.append(x); ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = np.random.permutation(len(x))
    x, y = x[order], y[order]
    nval = len(x) // 10
    xv, yv, xt, yt = map(torch.from_numpy, (x[:nval], y[:nval], x[nval:], y[nval:]))
    model = Gru()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = torch.nn.MSELoss()
    for epoch in range(4):
        model.train()
        perm = torch.randperm(len(xt))
        total = 0.0
        for i in range(0, len(xt), 256):
            idx = perm[i:i + 256]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward(); opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            val = loss_fn(model(xv), yv).item()
        print(f"epoch {epoch}: train mse {total / len(xt):.5f} validation mse {val:.5f}", file=sys.stderr)
    # torch exports an ONNX GRU node; the committed model is the same
    # computation in explicit operators (unroll_gru.py), checked equal here.
    # The export itself is kept as gru_torch.onnx: onnxruntime's fused GRU
    # kernel runs it, the reference `meshtune-agent forecast-bench` times too.
    from unroll_gru import unroll
    torch_path = os.path.join(HERE, "gru_torch.onnx")
    torch.onnx.export(model, torch.zeros(1, IN, FEATURES), torch_path, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False)
    onnx.checker.check_model(onnx.load(torch_path))
    onnx_path = os.path.join(HERE, "gru.onnx")
    onnx.save(unroll(onnx.load(torch_path), IN), onnx_path)
    probe = xv[:256].numpy()
    unroll_diff = float(np.abs(ort.InferenceSession(torch_path).run(None, {"x": probe})[0]
                               - ort.InferenceSession(onnx_path).run(None, {"x": probe})[0]).max())
    assert unroll_diff < 1e-5, unroll_diff
    # Inputs and onnxruntime's outputs on evaluation windows, for the Rust check (no Python in CI).
    sess = ort.InferenceSession(onnx_path)
    first, vals = read(os.path.join(TRACES, FILES[0]))
    starts = [int(len(vals) * TRAIN_FRACTION) + k * 997 for k in range(8)]
    check = []
    for s in starts:
        xin, m = features(first, vals, s)
        yout = sess.run(None, {"x": xin[None]})[0][0]
        check.append({"start": s, "input": xin.tolist(), "output": yout.tolist(), "window_mean": m})
    json.dump({"trace": FILES[0], "windows": check}, open(os.path.join(HERE, "gru_check.json"), "w"))
    meta = {
        "model": "gru.onnx",
        "input": {"name": "x", "shape": ["batch", IN, FEATURES],
                  "features": ["log1p(requests_per_second) - window_mean", "sin(time_of_day)", "cos(time_of_day)", "sin(day_of_week)", "cos(day_of_week)"]},
        "output": {"name": "y", "shape": ["batch", OUT], "meaning": "log1p(requests_per_second) - window_mean for the next 10 minutes"},
        "form": f"GRU(hidden 32, linear_before_reset) + Linear, written out step by step in plain ONNX operators by unroll_gru.py; max |difference| to the torch export on 256 validation windows in onnxruntime: {unroll_diff:.2e}",
        "normalisation": "window_mean = mean of log1p(requests_per_second) over the 60 input minutes; forecast = expm1(y + window_mean)",
        "data": {f: {"sha256": shas[f], **splits[f]} for f in FILES},
        "split": f"chronological: first {int(TRAIN_FRACTION * 100)} % of each trace for training (10 % of those windows held out for validation); the rest never used",
        "training": {"epochs": 4, "optimizer": "Adam lr 2e-3", "batch": 256, "seed": SEED, "train_mse": total / len(xt), "validation_mse": val},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__},
    }
    json.dump(meta, open(os.path.join(HERE, "gru.json"), "w"), indent=2)
    print(json.dumps(meta["training"]), file=sys.stderr)

if __name__ == "__main__":
    main()
