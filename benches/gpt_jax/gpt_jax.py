#!/usr/bin/env python3
"""A JAX/optax reference for kiln's character-level GPT (src/nn/blocks.rs).

Reads what examples/gpt_reference.rs wrote into OUT: the plan (plan.json: sizes,
optimizer, vocabulary, the start of every training and validation window) and kiln's
initial weights (init.safetensors, kiln's names); trains the same model from them on the
same batches with optax's AdamW on the CPU, evaluates the same validation windows, and
writes OUT/jax.json (validation loss at each evaluation point, training and generation
tokens/s). With kiln's results (OUT/kiln.json) beside it, prints both side by side and
exits 1 when the final validation losses differ by more than --tolerance.

The model, from the formulas kiln implements (docs/models.md):
  x = wte[idx] + wpe
  per block: x += attn(ln_1(x)); x += c_proj(gelu(c_fc(ln_2(x))))
  logits = lm_head(ln_f(x))
with LayerNorm over the last axis (biased variance, eps from the plan), GELU in its exact
erf form, causal multi-head attention with PyTorch's stacked in-projection
(in_proj_weight [3D, D]) and scores scaled by 1/sqrt(D / heads), and every linear map
y = x W^T + b. The loss is the mean cross-entropy over every position of the batch.
AdamW is decoupled and decays every parameter, biases and norms included (as kiln's
Optimizer::adamw); optax.adamw with no mask is the same rule.

    python3 benches/gpt_jax/gpt_jax.py OUT [--tolerance 0.05] [--relative]
"""

import argparse
import gzip
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from safetensors.numpy import load_file

CORPUS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "..", "..", "shared", "data", "shakespeare", "shakespeare.txt.gz",
)


def tokens(plan):
    """The corpus (or its first plan['chars'] characters) as ids of the plan's vocabulary."""
    with gzip.open(CORPUS, "rt", encoding="utf-8", newline="") as f:
        text = f.read()
    if plan["chars"] > 0:
        text = text[: plan["chars"]]
    symbols = [chr(c) for c in plan["vocab"]]
    if sorted(set(text)) != symbols:
        sys.exit("gpt_jax: the plan's vocabulary is not the text's characters")
    index = {c: i for i, c in enumerate(symbols)}
    ids = np.array([index[c] for c in text], dtype=np.int32)
    split = len(ids) - len(ids) // 10
    return ids[:split], ids[split:]


def windows(ids, starts, context):
    """Windows of `ids` at `starts` ([n, context]) and their next-token targets."""
    at = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(context)[None, :]
    return ids[at], ids[at + 1]


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * w + b


def linear(x, p, name):
    return x @ p[name + ".weight"].T + p[name + ".bias"]


def attention(x, p, name, heads):
    """Causal self-attention of x [B, T, D] with the stacked in-projection."""
    b, t, d = x.shape
    dh = d // heads
    qkv = x @ p[name + ".in_proj_weight"].T + p[name + ".in_proj_bias"]
    q, k, v = (
        qkv[..., i * d:(i + 1) * d].reshape(b, t, heads, dh).transpose(0, 2, 1, 3)
        for i in range(3)
    )
    scores = (q @ k.transpose(0, 1, 3, 2)) / np.sqrt(dh).astype(np.float32)
    causal = np.tril(np.ones((t, t), dtype=bool))
    scores = jnp.where(causal, scores, -jnp.inf)
    o = jax.nn.softmax(scores, axis=-1) @ v
    o = o.transpose(0, 2, 1, 3).reshape(b, t, d)
    return o @ p[name + ".out_proj.weight"].T + p[name + ".out_proj.bias"]


def forward(p, idx, plan):
    """Logits [B, T, vocab] of ids [B, T]."""
    eps = plan["layer_norm_eps"]
    ln = lambda x, n: layer_norm(x, p[n + ".weight"], p[n + ".bias"], eps)
    x = p["wte.weight"][idx] + p["wpe.weight"][: idx.shape[1]]
    for i in range(plan["layers"]):
        h = f"h{i}"
        x = x + attention(ln(x, h + ".ln_1"), p, h + ".attn", plan["heads"])
        hidden = jax.nn.gelu(linear(ln(x, h + ".ln_2"), p, h + ".mlp.c_fc"), approximate=False)
        x = x + linear(hidden, p, h + ".mlp.c_proj")
    return linear(ln(x, "ln_f"), p, "lm_head")


def loss_fn(p, x, y, plan):
    logp = jax.nn.log_softmax(forward(p, x, plan), axis=-1)
    return -jnp.take_along_axis(logp, y[..., None], axis=-1).mean()


def optimizer(plan):
    return optax.adamw(
        learning_rate=plan["lr"],
        b1=plan["beta1"],
        b2=plan["beta2"],
        eps=plan["eps"],
        weight_decay=plan["weight_decay"],
    )


def train(plan, params, train_ids, valid_ids):
    """Trains as the plan says; returns the evaluations and training tokens/s."""
    opt = optimizer(plan)
    context, batch = plan["context"], plan["batch"]

    def step(p, state, x, y):
        grads = jax.grad(loss_fn)(p, x, y, plan)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    state = opt.init(params)
    x0, y0 = windows(train_ids, plan["train_starts"][:batch], context)
    # Compiled ahead of time, so that the warm-up changes no weights and is not timed.
    step = jax.jit(step).lower(params, state, x0, y0).compile()
    vx, vy = windows(valid_ids, plan["valid_starts"], context)
    evaluate = jax.jit(lambda p: loss_fn(p, vx, vy, plan))
    evals = [[0, float(evaluate(params))]]
    starts = plan["train_starts"]
    trained, done = 0.0, 0
    while done < plan["iters"]:
        end = min(done + plan["eval_every"], plan["iters"])
        tick = time.perf_counter()
        for s in range(done, end):
            x, y = windows(train_ids, starts[s * batch:(s + 1) * batch], context)
            params, state = step(params, state, x, y)
        jax.block_until_ready(params)
        trained += time.perf_counter() - tick
        done = end
        evals.append([done, float(evaluate(params))])
        print(f"jax step {done}: validation loss {evals[-1][1]:.6f}", flush=True)
    return params, evals, plan["iters"] * batch * context / max(trained, 1e-9)


def generation_rate(plan, params):
    """Tokens/s of kiln's generation loop: the whole context window through the model
    for every new token (no key/value cache), temperature 0.8, top-k 40."""
    context = plan["context"]
    last = jax.jit(lambda p, w, i: jax.nn.softmax(forward(p, w[None], plan)[0, i]))
    rng = np.random.default_rng(1)

    def generate(n):
        ids = list(plan["prompt"])
        for _ in range(n):
            window = np.zeros(context, dtype=np.int32)
            recent = ids[-context:]
            window[: len(recent)] = recent
            probs = np.asarray(last(params, window, len(recent) - 1), dtype=np.float64)
            top = np.argsort(-probs, kind="stable")[:40]
            weights = probs[top] ** (1 / 0.8)
            ids.append(int(rng.choice(top, p=weights / weights.sum())))
        return n

    generate(2)
    tick = time.perf_counter()
    n = generate(plan["generate"])
    return n / max(time.perf_counter() - tick, 1e-9)


def compare(kiln, ours, tolerance, relative):
    """Prints kiln's and JAX's results side by side; True when the last losses agree."""
    print(f"kiln: {kiln['device']}; JAX {jax.__version__}: {jax.devices()[0].device_kind}")
    print(f"{'step':>6} {'kiln':>10} {'jax':>10} {'difference':>11}")
    diff = 0.0
    for (step, a), (_, b) in zip(kiln["evals"], ours["evals"]):
        diff = abs(a - b) / (abs(b) if relative else 1.0)
        print(f"{step:>6} {a:>10.6f} {b:>10.6f} {diff:>11.2e}")
    print(f"{'':>6} {'kiln':>10} {'jax':>10} {'kiln/jax':>11}")
    for key, label in [("train_tokens_per_s", "train tok/s"), ("generate_tokens_per_s", "gen tok/s")]:
        a, b = kiln[key], ours[key]
        print(f"{label:>6} {a:>10.1f} {b:>10.1f} {a / b:>11.2f}")
    ok = len(kiln["evals"]) == len(ours["evals"]) and diff <= tolerance
    kind = "relative" if relative else "absolute"
    print(f"final {kind} difference {diff:.2e}: {'within' if ok else 'OVER'} {tolerance}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="the folder examples/gpt_reference.rs wrote")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--relative", action="store_true", help="compare relative differences")
    args = ap.parse_args()
    with open(os.path.join(args.out, "plan.json")) as f:
        plan = json.load(f)
    train_ids, valid_ids = tokens(plan)
    params = {k: jnp.asarray(v) for k, v in load_file(os.path.join(args.out, "init.safetensors")).items()}
    params, evals, train_rate = train(plan, params, train_ids, valid_ids)
    ours = {
        "evals": evals,
        "train_tokens_per_s": train_rate,
        "generate_tokens_per_s": generation_rate(plan, params),
    }
    with open(os.path.join(args.out, "jax.json"), "w") as f:
        json.dump(ours, f)
    kiln_path = os.path.join(args.out, "kiln.json")
    if os.path.exists(kiln_path):
        with open(kiln_path) as f:
            kiln = json.load(f)
        sys.exit(0 if compare(kiln, ours, args.tolerance, args.relative) else 1)


if __name__ == "__main__":
    main()
