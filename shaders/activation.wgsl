// Activation forward/backward and row-wise softmax; act.wgsl is prepended to this file.
// Entry points bind only the variables they use, so bindings 2 and 3 are declared
// once per role: binding 2 is the output of the one-input kernels and the second
// input of the two-input ones.

struct Params {
    // Elements for the pointwise kernels, rows for softmax.
    n: u32,
    cols: u32,
    code: u32,
    alpha: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

const ROW_WG: u32 = 64u;
// Lowest finite f32: the identity of max that never makes inf - inf.
const LOWEST: f32 = -3.40282347e38;

var<workgroup> red: array<f32, ROW_WG>;

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if i >= p.n {
        return;
    }
    y[i] = act_forward(p.code, p.alpha, x[i]);
}

@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if i >= p.n {
        return;
    }
    dx[i] = dy[i] * act_derivative(p.code, p.alpha, x[i]);
}

// The same from the forward output: x holds y = f(z).
@compute @workgroup_size(256)
fn backward_from_output(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if i >= p.n {
        return;
    }
    dx[i] = dy[i] * act_derivative_from_output(p.code, p.alpha, x[i]);
}

// Softmax, one invocation per row: for narrow rows a workgroup would sit mostly idle.
@compute @workgroup_size(256)
fn softmax_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = flat(gid, nwg);
    if row >= p.n {
        return;
    }
    let base = row * p.cols;
    var m = LOWEST;
    for (var c = 0u; c < p.cols; c++) {
        m = max(m, x[base + c]);
    }
    var s = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let e = exp(x[base + c] - m);
        y[base + c] = e;
        s += e;
    }
    let inv = 1.0 / s;
    for (var c = 0u; c < p.cols; c++) {
        y[base + c] *= inv;
    }
}

// Tree reduction over the workgroup; the trailing barrier lets the caller reuse `red`.
fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = ROW_WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = ROW_WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Softmax, one workgroup per row; rows fold over a 2-D grid past 65535.
@compute @workgroup_size(ROW_WG)
fn softmax_groups(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.n {
        return;
    }
    let base = row * p.cols;
    var m = LOWEST;
    for (var c = lid; c < p.cols; c += ROW_WG) {
        m = max(m, x[base + c]);
    }
    m = reduce_max(lid, m);
    var s = 0.0;
    for (var c = lid; c < p.cols; c += ROW_WG) {
        s += exp(x[base + c] - m);
    }
    let inv = 1.0 / reduce_sum(lid, s);
    for (var c = lid; c < p.cols; c += ROW_WG) {
        y[base + c] = exp(x[base + c] - m) * inv;
    }
}

// Softmax backward, one invocation per row; x holds the softmax output here.
@compute @workgroup_size(256)
fn softmax_backward_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = flat(gid, nwg);
    if row >= p.n {
        return;
    }
    let base = row * p.cols;
    var d = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        d += x[base + c] * dy[base + c];
    }
    for (var c = 0u; c < p.cols; c++) {
        dx[base + c] = x[base + c] * (dy[base + c] - d);
    }
}

@compute @workgroup_size(ROW_WG)
fn softmax_backward_groups(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.n {
        return;
    }
    let base = row * p.cols;
    var d = 0.0;
    for (var c = lid; c < p.cols; c += ROW_WG) {
        d += x[base + c] * dy[base + c];
    }
    d = reduce_sum(lid, d);
    for (var c = lid; c < p.cols; c += ROW_WG) {
        dx[base + c] = x[base + c] * (dy[base + c] - d);
    }
}
