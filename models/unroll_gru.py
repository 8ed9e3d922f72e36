"""Rewrites the torch-exported GRU (an ONNX `GRU` node, a loop inside the
runtime) as the same computation in plain ONNX operators, one set per time
step, with the input projection of all 60 steps done as one MatMul and split
into per-step gate inputs once; every per-step tensor keeps its
[batch, 1, features] shape, so no step needs a reshape (12 operators a step).

Same weights, same arithmetic (outputs equal to onnxruntime's on the
original to ~1e-7); tract runs the explicit form about twice as fast as its
own GRU loop, because each step is a handful of batched kernels instead of
a scan body re-dispatched per step. Used by train_gru.py; by hand:

    python3 models/unroll_gru.py SRC.onnx DST.onnx
"""
import sys
import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto


def unroll(m, steps=60):
    """The explicit form of model `m`: GRU (linear_before_reset=1, gates z, r, n) then Gemm."""
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    gru = [n for n in m.graph.node if n.op_type == "GRU"][0]
    gemm = [n for n in m.graph.node if n.op_type == "Gemm"][0]
    attrs = {a.name: helper.get_attribute_value(a) for a in gru.attribute}
    assert attrs.get("linear_before_reset") == 1 and attrs.get("direction", b"forward") in (b"forward", "forward"), attrs
    W, R, B = (init[gru.input[i]] for i in (1, 2, 3))
    H = R.shape[-1]
    W, R, B = W[0], R[0], B[0]          # [3H, I], [3H, H], [6H]
    Wb, Rb = B[:3*H], B[3*H:]
    # Gate order z, r, n. Fold the recurrent biases of z and r into the input side.
    bias_in = Wb.copy(); bias_in[:2*H] += Rb[:2*H]
    rb_n = Rb[2*H:]
    HW = init[gemm.input[1]]; HB = init[gemm.input[2]]
    transB = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}.get("transB", 0)
    headW = HW.T if transB else HW
    T = int(steps)
    nodes, inits = [], []
    def c(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32) if np.asarray(arr).dtype.kind == 'f' else np.asarray(arr), name))
        return name
    c("Wt", W.T); c("bin", bias_in); c("Rt", R.T); c("rbn", rb_n); c("headW", headW); c("headB", HB)
    # Input projection for every step at once: [B, T, 3H]
    nodes.append(helper.make_node("MatMul", ["x", "Wt"], ["xw0"]))
    nodes.append(helper.make_node("Add", ["xw0", "bin"], ["xw"]))
    # Gates apart once for all steps, then one slice per step along time:
    # every per-step tensor keeps its [batch, 1, .] shape, no squeezes.
    c("split3", np.array([2*H, H], dtype=np.int64))
    nodes.append(helper.make_node("Split", ["xw", "split3"], ["xzr_all", "xn_all"], axis=2))
    c("splitT", np.array([1]*T, dtype=np.int64))
    nodes.append(helper.make_node("Split", ["xzr_all", "splitT"], [f"xzr{t}" for t in range(T)], axis=1))
    nodes.append(helper.make_node("Split", ["xn_all", "splitT"], [f"xn{t}" for t in range(T)], axis=1))
    # The recurrent projection with the n gate's bias folded in (zero for z, r).
    c("rbias", np.concatenate([np.zeros(2*H, dtype=np.float32), rb_n]))
    h = None
    for t in range(T):
        if h is None:
            nodes.append(helper.make_node("Sigmoid", [f"xzr{t}"], [f"zr{t}"]))
            nodes.append(helper.make_node("Split", [f"zr{t}", "splitH"], [f"z{t}", f"r{t}"], axis=2))
            nodes.append(helper.make_node("Mul", [f"r{t}", "rbn"], [f"rn{t}"]))
            nodes.append(helper.make_node("Add", [f"xn{t}", f"rn{t}"], [f"na{t}"]))
            nodes.append(helper.make_node("Tanh", [f"na{t}"], [f"n{t}"]))
            nodes.append(helper.make_node("Mul", [f"z{t}", f"n{t}"], [f"zn{t}"]))
            nodes.append(helper.make_node("Sub", [f"n{t}", f"zn{t}"], [f"h{t}"]))
        else:
            nodes.append(helper.make_node("MatMul", [h, "Rt"], [f"hr0{t}"]))
            nodes.append(helper.make_node("Add", [f"hr0{t}", "rbias"], [f"hr{t}"]))
            nodes.append(helper.make_node("Split", [f"hr{t}", "split3"], [f"hzr{t}", f"hn{t}"], axis=2))
            nodes.append(helper.make_node("Add", [f"xzr{t}", f"hzr{t}"], [f"zra{t}"]))
            nodes.append(helper.make_node("Sigmoid", [f"zra{t}"], [f"zr{t}"]))
            nodes.append(helper.make_node("Split", [f"zr{t}", "splitH"], [f"z{t}", f"r{t}"], axis=2))
            nodes.append(helper.make_node("Mul", [f"r{t}", f"hn{t}"], [f"rn{t}"]))
            nodes.append(helper.make_node("Add", [f"xn{t}", f"rn{t}"], [f"na{t}"]))
            nodes.append(helper.make_node("Tanh", [f"na{t}"], [f"n{t}"]))
            nodes.append(helper.make_node("Sub", [h, f"n{t}"], [f"d{t}"]))
            nodes.append(helper.make_node("Mul", [f"z{t}", f"d{t}"], [f"zd{t}"]))
            nodes.append(helper.make_node("Add", [f"n{t}", f"zd{t}"], [f"h{t}"]))
        h = f"h{t}"
    c("ax1", np.array([1], dtype=np.int64))
    nodes.append(helper.make_node("Squeeze", [h, "ax1"], ["hlast"]))
    h = "hlast"
    c("splitH", np.array([H, H], dtype=np.int64))
    nodes.append(helper.make_node("MatMul", [h, "headW"], ["y0"]))
    nodes.append(helper.make_node("Add", ["y0", "headB"], ["y"]))
    g = helper.make_graph(nodes, "gru_unrolled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", T, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)
    out = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    out.ir_version = m.ir_version
    onnx.checker.check_model(out)
    return out


if __name__ == "__main__":
    src, dst = sys.argv[1], sys.argv[2]
    onnx.save(unroll(onnx.load(src)), dst)
