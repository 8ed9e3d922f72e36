"""Times the GRU in onnxruntime (one thread) for `meshtune-agent forecast-bench`."""
import argparse, time
import numpy as np
import onnxruntime as ort

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--series", type=int, default=10000)
p.add_argument("--batch", type=int, default=500)
p.add_argument("--repeat", type=int, default=1)
a = p.parse_args()
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
x = (np.random.default_rng(1).random((a.batch, 60, 5), dtype=np.float32) - 0.5)
sess.run(None, {"x": x})
best = float("inf")
for _ in range(a.repeat):  # best of `repeat`, as the tract side does
    t0 = time.perf_counter()
    for _ in range(a.series // a.batch):
        sess.run(None, {"x": x})
    best = min(best, time.perf_counter() - t0)
print(f"seconds={best}")
