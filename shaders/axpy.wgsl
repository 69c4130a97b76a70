// In-place updates: y = alpha * x + y (axpy) and y = alpha * y (scale).

struct Params {
    n: u32,
    alpha: f32,
    beta: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn axpy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.n {
        return;
    }
    y[i] = p.alpha * x[i] + y[i];
}

// out = alpha * x, with x bound read-only and y as the output.
@compute @workgroup_size(256)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.n {
        return;
    }
    y[i] = p.alpha * x[i];
}

// Gradient of the L1/L2 penalties l1 * sum|w| + l2 * sum w^2 (Keras's definitions),
// added in place: grad += l1 * sign(w) + 2 * l2 * w. Here x is w, y is the gradient.
@compute @workgroup_size(256)
fn penalty(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.n {
        return;
    }
    y[i] += p.alpha * sign(x[i]) + 2.0 * p.beta * x[i];
}
