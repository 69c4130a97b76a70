// Batch normalisation over the channels of [n, c] or [n, c, h, w] (hw = h * w, 1 for 2-D):
// statistics per channel over n and hw, as PyTorch's BatchNorm1d/2d in training and eval.
//
// Per-channel sums run in two levels: one invocation per (image, channel) row of hw
// values, then one per channel over the n rows. When hw is 1 (HW1) the first level
// is skipped and the channel kernels read x and dy directly.
//
// Bindings per entry point (r = read-only, w = read-write):
//   row_moments    r1 x                                     w2 row mean, w3 row M2
//   channel_stats  r1 row mean (x), r2 row M2 (unused)      w3 mean, w4 invstd,
//                                                           w5 running mean, w6 running var
//   normalize      r1 x, r2 mean, r3 invstd (or running var when EVAL), r4 gamma, r5 beta
//                                                           w6 y
//   row_grads      r1 x, r2 dy, r3 mean, r4 invstd          w5 row sum dy, w6 row sum dy*xhat
//   channel_grads  r1 row sum dy (x), r2 row sum dy*xhat (dy), r3 mean, r4 invstd
//                                                           w5 dgamma, w6 dbeta
//   input_grad     r1 x, r2 dy, r3 mean, r4 invstd, r5 gamma, r6 dgamma, r7 dbeta
//                                                           w8 dx

struct Params {
    n: u32,
    c: u32,
    hw: u32,
    eps: f32,
    momentum: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> r1: array<f32>;
@group(0) @binding(2) var<storage, read> r2: array<f32>;
@group(0) @binding(3) var<storage, read> r3: array<f32>;
@group(0) @binding(4) var<storage, read> r4: array<f32>;
@group(0) @binding(5) var<storage, read> r5: array<f32>;
@group(0) @binding(6) var<storage, read> r6: array<f32>;
@group(0) @binding(7) var<storage, read> r7: array<f32>;
@group(0) @binding(2) var<storage, read_write> w2: array<f32>;
@group(0) @binding(3) var<storage, read_write> w3: array<f32>;
@group(0) @binding(4) var<storage, read_write> w4: array<f32>;
@group(0) @binding(5) var<storage, read_write> w5: array<f32>;
@group(0) @binding(6) var<storage, read_write> w6: array<f32>;
@group(0) @binding(8) var<storage, read_write> w8: array<f32>;

override HW1: bool = false;
override EVAL: bool = false;

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// Mean and sum of squared deviations of the hw values of row r = (image, channel).
@compute @workgroup_size(256)
fn row_moments(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat(gid, nwg);
    if r >= p.n * p.c {
        return;
    }
    let m = moments(r * p.hw, p.hw);
    w2[r] = m.x;
    w3[r] = m.y;
}

// Batch mean and 1/sqrt(biased var + eps) of channel ch, combining its n rows (each of
// hw values: M2 = sum of the rows' M2 + hw * sum (row mean - mean)^2), and the running
// statistics updated with the unbiased variance.
@compute @workgroup_size(256)
fn channel_stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let ch = flat(gid, nwg);
    if ch >= p.c {
        return;
    }
    var s = 0.0;
    for (var i = 0u; i < p.n; i++) {
        s += r1[i * p.c + ch];
    }
    let mean = s / f32(p.n);
    var between = 0.0;
    var within = 0.0;
    for (var i = 0u; i < p.n; i++) {
        let d = r1[i * p.c + ch] - mean;
        between += d * d;
        if !HW1 {
            within += r2[i * p.c + ch];
        }
    }
    let count = f32(p.n * p.hw);
    let var_b = (within + f32(p.hw) * between) / count;
    w3[ch] = mean;
    w4[ch] = 1.0 / sqrt(var_b + p.eps);
    let m = p.momentum;
    w5[ch] = (1.0 - m) * w5[ch] + m * mean;
    w6[ch] = (1.0 - m) * w6[ch] + m * var_b * count / (count - 1.0);
}

// y = gamma * (x - mean) * invstd + beta, elementwise.
@compute @workgroup_size(256)
fn normalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if i >= p.n * p.c * p.hw {
        return;
    }
    let ch = (i / p.hw) % p.c;
    var invstd = r3[ch];
    if EVAL {
        invstd = 1.0 / sqrt(r3[ch] + p.eps);
    }
    w6[i] = r4[ch] * (r1[i] - r2[ch]) * invstd + r5[ch];
}

// Sums of dy and dy * xhat over the hw values of row r = (image, channel).
@compute @workgroup_size(256)
fn row_grads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat(gid, nwg);
    if r >= p.n * p.c {
        return;
    }
    let ch = r % p.c;
    let mean = r3[ch];
    let invstd = r4[ch];
    let base = r * p.hw;
    var sd = 0.0;
    var sdx = 0.0;
    for (var j = 0u; j < p.hw; j++) {
        let d = r2[base + j];
        sd += d;
        sdx += d * (r1[base + j] - mean) * invstd;
    }
    w5[r] = sd;
    w6[r] = sdx;
}

// dgamma = sum of dy * xhat and dbeta = sum of dy over channel ch's n rows.
@compute @workgroup_size(256)
fn channel_grads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let ch = flat(gid, nwg);
    if ch >= p.c {
        return;
    }
    var sd = 0.0;
    var sdx = 0.0;
    for (var i = 0u; i < p.n; i++) {
        let at = i * p.c + ch;
        if HW1 {
            sd += r2[at];
            sdx += r2[at] * (r1[at] - r3[ch]) * r4[ch];
        } else {
            sd += r1[at];
            sdx += r2[at];
        }
    }
    w5[ch] = sdx;
    w6[ch] = sd;
}

// dx = gamma * invstd * (dy - dbeta / m - xhat * dgamma / m), m = n * hw values per channel.
@compute @workgroup_size(256)
fn input_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if i >= p.n * p.c * p.hw {
        return;
    }
    let ch = (i / p.hw) % p.c;
    let invstd = r4[ch];
    let xhat = (r1[i] - r3[ch]) * invstd;
    let m = f32(p.n * p.hw);
    w8[i] = r5[ch] * invstd * (r2[i] - r7[ch] / m - xhat * r6[ch] / m);
}
