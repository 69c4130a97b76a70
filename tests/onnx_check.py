"""Checks an ONNX file and runs it: used by tests/onnx.rs.

Usage: python3 tests/onnx_check.py MODEL.onnx < inputs.json

inputs.json maps each input name to {"shape": [...], "data": [flat float values]}.
Runs onnx.checker.check_model (full check, with shape inference) and onnxruntime on
the inputs, and prints one JSON object: the model's IR version, opset, input and
output names with their shapes (symbolic dimensions as strings), op types, and each
output's values, flattened.
"""

import json
import sys

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
except ImportError as e:
    sys.exit(f"onnx_check.py needs numpy, onnx and onnxruntime (pip install onnx onnxruntime): {e}")


def dims(value_info):
    shape = value_info.type.tensor_type.shape
    return [d.dim_param if d.dim_param else d.dim_value for d in shape.dim]


def main():
    path = sys.argv[1]
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    feeds = {
        name: np.asarray(v["data"], dtype=np.float32).reshape(v["shape"])
        for name, v in json.load(sys.stdin).items()
    }
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    results = session.run(names, feeds)
    print(json.dumps({
        "ir_version": model.ir_version,
        "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")],
        "inputs": {i.name: dims(i) for i in model.graph.input},
        "outputs": {o.name: dims(o) for o in model.graph.output},
        "ops": sorted({n.op_type for n in model.graph.node}),
        "initializers": [t.name for t in model.graph.initializer],
        "values": {n: r.astype(np.float64).ravel().tolist() for n, r in zip(names, results)},
    }))


if __name__ == "__main__":
    main()
