// One time step of a recurrent layer (PyTorch's LSTM and GRU, batch-first), forward or
// backward, one invocation per (sample, unit): the unit's share of the recurrent product
// (a dot product over the hidden state per gate) fused with the gate nonlinearities, so a
// step is one dispatch. The input projection x W_ih^T + b_ih of all steps is one matmul
// before the loop, and the weight gradients are matmuls after it (src/ops/rnn_cell.rs).
// Row b * steps + t of every [B*T, ..] buffer is sample b's step t.
//
// Bindings per entry point (r = read-only, w = read-write):
//   step_mask      r1 x [BT,D]                                           w2 keep [BT]
//   lstm_forward   r1 xp [BT,4H], r2 w_hh [4H,H], r3 b_hh, r4 keep       w5 hprev [BT,H], w6 gates [BT,4H], w7 c [BT,H], w8 y
//   gru_forward    r1 xp [BT,3H], r2 w_hh [3H,H], r3 b_hh, r4 keep       w5 hprev, w6 gates [BT,4H], w7 y
//   lstm_backward  r1 dy, r2 w_hh, r3 gates, r4 c, r5 keep               w6 dg [BT,4H], w7 carry [2,B,H]
//   gru_backward   r1 dy, r2 w_hh, r3 gates, r4 hprev, r5 keep           w6 dgi [BT,3H], w7 dgh [BT,3H], w8 carry [2,B,H]
// hprev row (b, t) holds h_{t-1} (zeros at t = 0): the backward's dW_hh is one product of
// the recurrent gate gradients with it. LSTM gates are i, f, g, o after their
// nonlinearities; GRU's are r, z, n and W_hn h + b_hn (which r scales). The backward's
// carry is what flows from step t + 1 to t outside the recurrent product: dc_{t+1} f_{t+1}
// for the LSTM, dh_{t+1} z_{t+1} for the GRU, and past a masked step its whole dh (and
// dc). y and dy are [B,T,H] when `seq`, else [B,H]. When `masked`, a row whose inputs all
// equal `mask` is padding (keep 0): its step carries the state over and outputs zeros.

struct Params {
    batch: u32,
    steps: u32,
    hidden: u32,
    t: u32,
    seq: u32,
    gh: u32,
    inputs: u32,
    masked: u32,
    mask: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> r1: array<f32>;
@group(0) @binding(2) var<storage, read> r2: array<f32>;
@group(0) @binding(3) var<storage, read> r3: array<f32>;
@group(0) @binding(4) var<storage, read> r4: array<f32>;
@group(0) @binding(5) var<storage, read> r5: array<f32>;
@group(0) @binding(2) var<storage, read_write> w2: array<f32>;
@group(0) @binding(5) var<storage, read_write> w5: array<f32>;
@group(0) @binding(6) var<storage, read_write> w6: array<f32>;
@group(0) @binding(7) var<storage, read_write> w7: array<f32>;
@group(0) @binding(8) var<storage, read_write> w8: array<f32>;

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

// tanh from exp(-2|v|), which cannot overflow.
fn tanh_safe(v: f32) -> f32 {
    let e = exp(-2.0 * abs(v));
    return sign(v) * (1.0 - e) / (1.0 + e);
}

// Gate row k of W_hh times h_{t-1} of the row (zero at t = 0).
fn recur(k: u32, row: u32) -> f32 {
    var s = 0.0;
    if p.t == 0u {
        return s;
    }
    for (var m = 0u; m < p.hidden; m++) {
        s += r2[k * p.hidden + m] * w5[row * p.hidden + m];
    }
    return s;
}

// Gate pre-activation k of unit j: input projection, recurrent bias and product.
fn pre(k: u32, row: u32) -> f32 {
    return r1[row * p.gh + k] + r3[k] + recur(k, row);
}

// dL/dh_t from the output alone (a masked step output a constant zero).
fn dy_at(row: u32, b: u32, j: u32, kept: bool) -> f32 {
    if p.seq == 1u {
        if !kept {
            return 0.0;
        }
        return r1[row * p.hidden + j];
    }
    if p.t + 1u == p.steps {
        return r1[b * p.hidden + j];
    }
    return 0.0;
}

// Column j of W_hh times the next step's recurrent gate gradients (LSTM: dg in w6).
fn recur_back_lstm(row: u32, j: u32) -> f32 {
    var s = 0.0;
    for (var k = 0u; k < p.gh; k++) {
        s += w6[(row + 1u) * p.gh + k] * r2[k * p.hidden + j];
    }
    return s;
}

// The same for the GRU, whose recurrent gate gradients are dgh in w7.
fn recur_back_gru(row: u32, j: u32) -> f32 {
    var s = 0.0;
    for (var k = 0u; k < p.gh; k++) {
        s += w7[(row + 1u) * p.gh + k] * r2[k * p.hidden + j];
    }
    return s;
}

// Whether row `row` is a real step (forward: keep in r4; backward: in r5).
fn kept_fwd(row: u32) -> bool {
    return p.masked == 0u || r4[row] != 0.0;
}

fn kept_bwd(row: u32) -> bool {
    return p.masked == 0u || r5[row] != 0.0;
}

// h_{t-1} of unit j (zero at t = 0), from hprev.
fn h_prev(row: u32, j: u32) -> f32 {
    if p.t == 0u {
        return 0.0;
    }
    return w5[row * p.hidden + j];
}

// Writes step t's h where the next step reads it; returns where y takes it and what it
// takes there (a masked step's output is zero), or NONE when y takes nothing this step.
const NONE: u32 = 0xffffffffu;

fn emit(row: u32, b: u32, j: u32, h: f32) -> u32 {
    let hs = p.hidden;
    if p.t == 0u {
        w5[row * hs + j] = 0.0;
    }
    if p.t + 1u < p.steps {
        w5[(row + 1u) * hs + j] = h;
    }
    if p.seq == 1u {
        return row * hs + j;
    }
    if p.t + 1u == p.steps {
        return b * hs + j;
    }
    return NONE;
}

fn y_value(h: f32, kept: bool) -> f32 {
    return select(0.0, h, kept || p.seq == 0u);
}

@compute @workgroup_size(64)
fn step_mask(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = flat(gid, nwg);
    if row >= p.batch * p.steps {
        return;
    }
    var keep = 0.0;
    for (var k = 0u; k < p.inputs; k++) {
        if r1[row * p.inputs + k] != p.mask {
            keep = 1.0;
        }
    }
    w2[row] = keep;
}

@compute @workgroup_size(64)
fn lstm_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat(gid, nwg);
    if e >= p.batch * p.hidden {
        return;
    }
    let hs = p.hidden;
    let b = e / hs;
    let j = e % hs;
    let row = b * p.steps + p.t;
    let kept = kept_fwd(row);
    var cp = 0.0;
    if p.t > 0u {
        cp = w7[(row - 1u) * hs + j];
    }
    let g = row * 4u * hs + j;
    if !kept {
        w7[row * hs + j] = cp;
        let hp = h_prev(row, j);
        let at = emit(row, b, j, hp);
        if at != NONE {
            w8[at] = y_value(hp, kept);
        }
        return;
    }
    let gi = sigmoid(pre(j, row));
    let gf = sigmoid(pre(hs + j, row));
    let gg = tanh_safe(pre(2u * hs + j, row));
    let go = sigmoid(pre(3u * hs + j, row));
    let c = gf * cp + gi * gg;
    w6[g] = gi;
    w6[g + hs] = gf;
    w6[g + 2u * hs] = gg;
    w6[g + 3u * hs] = go;
    w7[row * hs + j] = c;
    let h = go * tanh_safe(c);
    let at = emit(row, b, j, h);
    if at != NONE {
        w8[at] = h;
    }
}

@compute @workgroup_size(64)
fn gru_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat(gid, nwg);
    if e >= p.batch * p.hidden {
        return;
    }
    let hs = p.hidden;
    let b = e / hs;
    let j = e % hs;
    let row = b * p.steps + p.t;
    let kept = kept_fwd(row);
    let hp = h_prev(row, j);
    if !kept {
        let at = emit(row, b, j, hp);
        if at != NONE {
            w7[at] = y_value(hp, kept);
        }
        return;
    }
    let r = sigmoid(pre(j, row));
    let z = sigmoid(pre(hs + j, row));
    let hn = r3[2u * hs + j] + recur(2u * hs + j, row);
    let n = tanh_safe(r1[row * p.gh + 2u * hs + j] + r * hn);
    let g = row * 4u * hs + j;
    w6[g] = r;
    w6[g + hs] = z;
    w6[g + 2u * hs] = n;
    w6[g + 3u * hs] = hn;
    let h = (1.0 - z) * n + z * hp;
    let at = emit(row, b, j, h);
    if at != NONE {
        w7[at] = h;
    }
}

@compute @workgroup_size(64)
fn lstm_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat(gid, nwg);
    if e >= p.batch * p.hidden {
        return;
    }
    let hs = p.hidden;
    let b = e / hs;
    let j = e % hs;
    let row = b * p.steps + p.t;
    let kept = kept_bwd(row);
    let last = p.t + 1u == p.steps;
    let hc = p.batch * hs + e;
    var dh = dy_at(row, b, j, kept);
    var dc = 0.0;
    if !last {
        dh += recur_back_lstm(row, j) + w7[hc];
        dc = w7[e];
    }
    let g = row * 4u * hs + j;
    if !kept {
        w7[hc] = dh;
        w7[e] = dc;
        for (var q = 0u; q < 4u; q++) {
            w6[g + q * hs] = 0.0;
        }
        return;
    }
    let gi = r3[g];
    let gf = r3[g + hs];
    let gg = r3[g + 2u * hs];
    let go = r3[g + 3u * hs];
    let tc = tanh_safe(r4[row * hs + j]);
    var cp = 0.0;
    if p.t > 0u {
        cp = r4[(row - 1u) * hs + j];
    }
    dc += dh * go * (1.0 - tc * tc);
    w7[e] = dc * gf;
    w7[hc] = 0.0;
    w6[g] = dc * gg * gi * (1.0 - gi);
    w6[g + hs] = dc * cp * gf * (1.0 - gf);
    w6[g + 2u * hs] = dc * gi * (1.0 - gg * gg);
    w6[g + 3u * hs] = dh * tc * go * (1.0 - go);
}

@compute @workgroup_size(64)
fn gru_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat(gid, nwg);
    if e >= p.batch * p.hidden {
        return;
    }
    let hs = p.hidden;
    let b = e / hs;
    let j = e % hs;
    let row = b * p.steps + p.t;
    let kept = kept_bwd(row);
    var dh = dy_at(row, b, j, kept);
    if p.t + 1u < p.steps {
        dh += recur_back_gru(row, j) + w8[e];
    }
    let o = row * p.gh + j;
    if !kept {
        w8[e] = dh;
        for (var q = 0u; q < 3u; q++) {
            w6[o + q * hs] = 0.0;
            w7[o + q * hs] = 0.0;
        }
        return;
    }
    let g = row * 4u * hs + j;
    let r = r3[g];
    let z = r3[g + hs];
    let n = r3[g + 2u * hs];
    let hn = r3[g + 3u * hs];
    let hp = r4[row * hs + j];
    w8[e] = dh * z;
    let dn = dh * (1.0 - z) * (1.0 - n * n);
    let dr = dn * hn * r * (1.0 - r);
    let dz = dh * (hp - n) * z * (1.0 - z);
    w6[o] = dr;
    w6[o + hs] = dz;
    w6[o + 2u * hs] = dn;
    w7[o] = dr;
    w7[o + hs] = dz;
    w7[o + 2u * hs] = dn * r;
}
