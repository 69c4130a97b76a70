"""Reference for tests/attention.rs: multi-head attention written from the formulas of
PyTorch's F.multi_head_attention_forward (batch_first), in float64 numpy.

Reads JSON from stdin: batch, t, s, d, heads, causal, x [batch*t*d], m (the key input
[batch*s*d], or null for self-attention), in_proj_weight [3d*d], in_proj_bias [3d],
out_proj_weight [d*d], out_proj_bias [d], target [batch*t*d]. Writes JSON: y (the layer's
output), loss (mean squared error against target) and grads: the loss's gradient with
respect to each of the four parameters, by central differences of the float64 forward
(independent of any hand-derived backward).
"""

import json
import sys

import numpy as np


def forward(a, w_in, b_in, w_out, b_out):
    n, t, s, d, h = a["batch"], a["t"], a["s"], a["d"], a["heads"]
    dh = d // h
    x = np.asarray(a["x"], dtype=np.float64).reshape(n, t, d)
    m = x if a["m"] is None else np.asarray(a["m"], dtype=np.float64).reshape(n, s, d)
    # in_proj_weight stacks the query, key and value projections, in that order.
    q = x @ w_in[:d].T + b_in[:d]
    k = m @ w_in[d : 2 * d].T + b_in[d : 2 * d]
    v = m @ w_in[2 * d :].T + b_in[2 * d :]
    # Head i is columns i*dh .. (i+1)*dh: [n, h, rows, dh].
    q = q.reshape(n, t, h, dh).transpose(0, 2, 1, 3)
    k = k.reshape(n, s, h, dh).transpose(0, 2, 1, 3)
    v = v.reshape(n, s, h, dh).transpose(0, 2, 1, 3)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
    if a["causal"]:
        # attn_mask = triu(-inf, diagonal=1): query i sees keys j <= i.
        mask = np.triu(np.ones((t, s), dtype=bool), k=1)
        scores = np.where(mask, -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p = p / p.sum(axis=-1, keepdims=True)
    o = (p @ v).transpose(0, 2, 1, 3).reshape(n, t, d)
    return o @ w_out.T + b_out


def main():
    a = json.load(sys.stdin)
    d = a["d"]
    params = [
        np.asarray(a["in_proj_weight"], dtype=np.float64).reshape(3 * d, d),
        np.asarray(a["in_proj_bias"], dtype=np.float64),
        np.asarray(a["out_proj_weight"], dtype=np.float64).reshape(d, d),
        np.asarray(a["out_proj_bias"], dtype=np.float64),
    ]
    target = np.asarray(a["target"], dtype=np.float64)

    def loss(ps):
        y = forward(a, *ps).reshape(-1)
        return float(np.mean((y - target) ** 2))

    y = forward(a, *params).reshape(-1)
    names = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    grads = {}
    step = 1e-6
    for name, p in zip(names, params):
        g = np.zeros(p.size)
        flat = p.reshape(-1)
        for i in range(p.size):
            keep = flat[i]
            flat[i] = keep + step
            up = loss(params)
            flat[i] = keep - step
            down = loss(params)
            flat[i] = keep
            g[i] = (up - down) / (2 * step)
        grads[name] = g.tolist()
    json.dump({"y": y.tolist(), "loss": loss(params), "grads": grads}, sys.stdout)


main()
