// One time step of a recurrent layer (PyTorch's LSTM and GRU, batch-first), forward or
// backward, one invocation per (sample, unit): the unit's share of the recurrent product
// (a dot product over the hidden state per gate) fused with the gate nonlinearities, so a
// step is one dispatch. The input projection x W_ih^T + b_ih of all steps is one matmul
// before the loop, and the weight gradients are matmuls after it (src/ops/rnn_cell.rs).
// Row b * steps + t of every [B*T, ..] buffer is sample b's step t.
//
// Bindings per entry point (r = read-only, w = read-write):
//   lstm_forward   r1 xp [BT,4H], r2 w_hh [4H,H], r3 b_hh    w4 hprev [BT,H], w5 gates [BT,4H], w6 c [BT,H], w7 y
//   gru_forward    r1 xp [BT,3H], r2 w_hh [3H,H], r3 b_hh    w4 hprev, w5 gates [BT,4H], w6 y
//   lstm_backward  r1 dy, r2 w_hh, r3 gates, r4 c            w5 dg [BT,4H], w6 carry [B,H]
//   gru_backward   r1 dy, r2 w_hh, r3 gates, r4 hprev        w5 dgi [BT,3H], w6 dgh [BT,3H], w7 carry [B,H]
// hprev row (b, t) holds h_{t-1} (zeros at t = 0): the backward's dW_hh is one product of
// the recurrent gate gradients with it. LSTM gates are i, f, g, o after their
// nonlinearities; GRU's are r, z, n and W_hn h + b_hn (which r scales). The backward's
// carry is what flows from step t + 1 to t outside the recurrent product: dc_{t+1} f_{t+1}
// for the LSTM, dh_{t+1} z_{t+1} for the GRU; y and dy are [B,T,H] when `seq`, else [B,H].

struct Params {
    batch: u32,
    steps: u32,
    hidden: u32,
    t: u32,
    seq: u32,
    gh: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> r1: array<f32>;
@group(0) @binding(2) var<storage, read> r2: array<f32>;
@group(0) @binding(3) var<storage, read> r3: array<f32>;
@group(0) @binding(4) var<storage, read> r4: array<f32>;
@group(0) @binding(4) var<storage, read_write> w4: array<f32>;
@group(0) @binding(5) var<storage, read_write> w5: array<f32>;
@group(0) @binding(6) var<storage, read_write> w6: array<f32>;
@group(0) @binding(7) var<storage, read_write> w7: array<f32>;

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
        s += r2[k * p.hidden + m] * w4[row * p.hidden + m];
    }
    return s;
}

// Gate pre-activation k of unit j: input projection, recurrent bias and product.
fn pre(k: u32, row: u32) -> f32 {
    return r1[row * p.gh + k] + r3[k] + recur(k, row);
}

// dL/dh_t from the output alone.
fn dy_at(row: u32, b: u32, j: u32) -> f32 {
    if p.seq == 1u {
        return r1[row * p.hidden + j];
    }
    if p.t + 1u == p.steps {
        return r1[b * p.hidden + j];
    }
    return 0.0;
}

// Column j of W_hh times the next step's recurrent gate gradients (LSTM: dg in w5).
fn recur_back_lstm(row: u32, j: u32) -> f32 {
    var s = 0.0;
    for (var k = 0u; k < p.gh; k++) {
        s += w5[(row + 1u) * p.gh + k] * r2[k * p.hidden + j];
    }
    return s;
}

// The same for the GRU, whose recurrent gate gradients are dgh in w6.
fn recur_back_gru(row: u32, j: u32) -> f32 {
    var s = 0.0;
    for (var k = 0u; k < p.gh; k++) {
        s += w6[(row + 1u) * p.gh + k] * r2[k * p.hidden + j];
    }
    return s;
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
    let gi = sigmoid(pre(j, row));
    let gf = sigmoid(pre(hs + j, row));
    let gg = tanh_safe(pre(2u * hs + j, row));
    let go = sigmoid(pre(3u * hs + j, row));
    var cp = 0.0;
    if p.t > 0u {
        cp = w6[(row - 1u) * hs + j];
    }
    let c = gf * cp + gi * gg;
    let h = go * tanh_safe(c);
    let g = row * 4u * hs + j;
    w5[g] = gi;
    w5[g + hs] = gf;
    w5[g + 2u * hs] = gg;
    w5[g + 3u * hs] = go;
    w6[row * hs + j] = c;
    if p.t == 0u {
        w4[row * hs + j] = 0.0;
    }
    if p.t + 1u < p.steps {
        w4[(row + 1u) * hs + j] = h;
    }
    if p.seq == 1u {
        w7[row * hs + j] = h;
    } else if p.t + 1u == p.steps {
        w7[b * hs + j] = h;
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
    var hp = 0.0;
    if p.t > 0u {
        hp = w4[row * hs + j];
    }
    let r = sigmoid(pre(j, row));
    let z = sigmoid(pre(hs + j, row));
    let hn = r3[2u * hs + j] + recur(2u * hs + j, row);
    let n = tanh_safe(r1[row * p.gh + 2u * hs + j] + r * hn);
    let h = (1.0 - z) * n + z * hp;
    let g = row * 4u * hs + j;
    w5[g] = r;
    w5[g + hs] = z;
    w5[g + 2u * hs] = n;
    w5[g + 3u * hs] = hn;
    if p.t == 0u {
        w4[row * hs + j] = 0.0;
    }
    if p.t + 1u < p.steps {
        w4[(row + 1u) * hs + j] = h;
    }
    if p.seq == 1u {
        w6[row * hs + j] = h;
    } else if p.t + 1u == p.steps {
        w6[b * hs + j] = h;
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
    let last = p.t + 1u == p.steps;
    var dh = dy_at(row, b, j);
    if !last {
        dh += recur_back_lstm(row, j);
    }
    let g = row * 4u * hs + j;
    let gi = r3[g];
    let gf = r3[g + hs];
    let gg = r3[g + 2u * hs];
    let go = r3[g + 3u * hs];
    let tc = tanh_safe(r4[row * hs + j]);
    var cp = 0.0;
    if p.t > 0u {
        cp = r4[(row - 1u) * hs + j];
    }
    var dc = dh * go * (1.0 - tc * tc);
    if !last {
        dc += w6[b * hs + j];
    }
    w6[b * hs + j] = dc * gf;
    w5[g] = dc * gg * gi * (1.0 - gi);
    w5[g + hs] = dc * cp * gf * (1.0 - gf);
    w5[g + 2u * hs] = dc * gi * (1.0 - gg * gg);
    w5[g + 3u * hs] = dh * tc * go * (1.0 - go);
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
    var dh = dy_at(row, b, j);
    if p.t + 1u < p.steps {
        dh += recur_back_gru(row, j) + w7[b * hs + j];
    }
    let g = row * 4u * hs + j;
    let r = r3[g];
    let z = r3[g + hs];
    let n = r3[g + 2u * hs];
    let hn = r3[g + 3u * hs];
    let hp = r4[row * hs + j];
    w7[b * hs + j] = dh * z;
    let dn = dh * (1.0 - z) * (1.0 - n * n);
    let dr = dn * hn * r * (1.0 - r);
    let dz = dh * (hp - n) * z * (1.0 - z);
    let o = row * p.gh + j;
    w5[o] = dr;
    w5[o + hs] = dz;
    w5[o + 2u * hs] = dn;
    w6[o] = dr;
    w6[o + hs] = dz;
    w6[o + 2u * hs] = dn * r;
}
