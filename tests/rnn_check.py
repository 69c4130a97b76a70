"""An independent reference for tests/rnn.rs: PyTorch's LSTM and GRU equations
(torch.nn.LSTM / torch.nn.GRU, one layer, batch_first, zero initial state) in float64
numpy, and the gradients of sum(y * dy) by central differences of that forward (no
hand-derived backward). Reads, one per line: the cell ("lstm" or "gru"), "B T D H seq"
(and the mask value, for Keras's masking: a step whose features all equal it keeps the
state and outputs zeros; which steps are padding is fixed by the unperturbed x),
then x, w_ih, w_hh, b_ih, b_hh, dy as space-separated numbers. Writes y, dx, dw_ih, dw_hh,
db_ih, db_hh, one per line."""
import sys

import numpy as np


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def forward(cell, keep, x, w_ih, w_hh, b_ih, b_hh, seq):
    batch, steps, _ = x.shape
    hidden = w_hh.shape[1]
    h = np.zeros((batch, hidden))
    c = np.zeros((batch, hidden))
    out = []
    for t in range(steps):
        h_before, c_before = h, c
        gi = x[:, t, :] @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        if cell == "lstm":
            i, f, g, o = np.split(gi + gh, 4, axis=1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
        else:
            i_r, i_z, i_n = np.split(gi, 3, axis=1)
            h_r, h_z, h_n = np.split(gh, 3, axis=1)
            r = sigmoid(i_r + h_r)
            z = sigmoid(i_z + h_z)
            n = np.tanh(i_n + r * h_n)
            h = (1.0 - z) * n + z * h
        k = keep[:, t : t + 1]
        h = np.where(k, h, h_before)
        c = np.where(k, c, c_before)
        out.append(np.where(k, h, 0.0))
    return np.stack(out, axis=1) if seq else h


def main():
    lines = sys.stdin.read().split("\n")
    cell = lines[0].strip()
    head = lines[1].split()
    batch, steps, inputs, hidden, seq = (int(v) for v in head[:5])
    arrays = [np.array([float(v) for v in line.split()]) for line in lines[2:8]]
    gates = 4 if cell == "lstm" else 3
    shapes = [
        (batch, steps, inputs),
        (gates * hidden, inputs),
        (gates * hidden, hidden),
        (gates * hidden,),
        (gates * hidden,),
    ]
    args = [a.reshape(s) for a, s in zip(arrays[:5], shapes)]
    dy = arrays[5]
    if len(head) > 5:
        keep = np.any(args[0] != float(head[5]), axis=2)
    else:
        keep = np.ones((batch, steps), dtype=bool)

    def loss(values):
        y = forward(cell, keep, *values, seq == 1)
        return float(np.sum(y.reshape(-1) * dy))

    print(" ".join(repr(float(v)) for v in forward(cell, keep, *args, seq == 1).reshape(-1)))
    step = 1e-6
    for k in range(5):
        grad = np.zeros(args[k].size)
        flat = args[k].reshape(-1)
        for e in range(flat.size):
            at = flat[e]
            flat[e] = at + step
            up = loss(args)
            flat[e] = at - step
            down = loss(args)
            flat[e] = at
            grad[e] = (up - down) / (2.0 * step)
        print(" ".join(repr(float(v)) for v in grad))


main()
