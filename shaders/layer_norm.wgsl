// Layer normalisation over the last dimension: each row of d values normalised by its
// own mean and variance (biased), then scaled by gamma and shifted by beta, both [d].
// One invocation per row (see the note on lavapipe in src/ops/activation.rs: a
// workgroup reduction per row is slower there); the parameter gradients are column sums
// over the rows, in chunks of `chunk` rows whose partial sums src/ops/layer_norm.rs adds.
//
// Bindings per entry point (r = read-only, w = read-write):
//   forward      r1 x, r2 gamma, r3 beta                     w4 y, w5 mean, w6 invstd
//   input_grad   r1 x, r2 dy, r3 gamma, r4 mean, r5 invstd   w6 dx
//   gamma_grad   r1 x, r2 dy, r3 mean, r4 invstd             w5 partial dgamma [chunks, d]

struct Params {
    rows: u32,
    d: u32,
    eps: f32,
    chunk: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> r1: array<f32>;
@group(0) @binding(2) var<storage, read> r2: array<f32>;
@group(0) @binding(3) var<storage, read> r3: array<f32>;
@group(0) @binding(4) var<storage, read> r4: array<f32>;
@group(0) @binding(5) var<storage, read> r5: array<f32>;
@group(0) @binding(4) var<storage, read_write> w4: array<f32>;
@group(0) @binding(5) var<storage, read_write> w5: array<f32>;
@group(0) @binding(6) var<storage, read_write> w6: array<f32>;

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat(gid, nwg);
    if r >= p.rows {
        return;
    }
    let base = r * p.d;
    let m = moments(base, p.d);
    let mean = m.x;
    let invstd = 1.0 / sqrt(m.y / f32(p.d) + p.eps);
    for (var j = 0u; j < p.d; j++) {
        w4[base + j] = r2[j] * (r1[base + j] - mean) * invstd + r3[j];
    }
    w5[r] = mean;
    w6[r] = invstd;
}

// dx = invstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gamma, per row.
@compute @workgroup_size(256)
fn input_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat(gid, nwg);
    if r >= p.rows {
        return;
    }
    let base = r * p.d;
    let mean = r4[r];
    let invstd = r5[r];
    var sg = 0.0;
    var sgx = 0.0;
    for (var j = 0u; j < p.d; j++) {
        let g = r2[base + j] * r3[j];
        sg += g;
        sgx += g * (r1[base + j] - mean) * invstd;
    }
    let n = f32(p.d);
    for (var j = 0u; j < p.d; j++) {
        let xhat = (r1[base + j] - mean) * invstd;
        w6[base + j] = invstd * (r2[base + j] * r3[j] - sg / n - xhat * sgx / n);
    }
}

// Partial dgamma: the sum of dy * xhat over chunk k's rows, for one column.
@compute @workgroup_size(256)
fn gamma_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat(gid, nwg);
    let chunks = max(1u, (p.rows + p.chunk - 1u) / p.chunk);
    if t >= chunks * p.d {
        return;
    }
    let col = t % p.d;
    let k = t / p.d;
    let end = min(p.rows, (k + 1u) * p.chunk);
    var s = 0.0;
    for (var r = k * p.chunk; r < end; r++) {
        s += r2[r * p.d + col] * (r1[r * p.d + col] - r3[r]) * r4[r];
    }
    w5[t] = s;
}
