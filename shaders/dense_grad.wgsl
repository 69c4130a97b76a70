// The backward of a dense layer's epilogue in one pass, one invocation per output column n:
//   dz[r, n] = dy[r, n] * f'(y[r, n])    (the activation's derivative from its output)
//   dzt[n, r] = dz[r, n]                 (so the weight gradient is a plain A * B product)
//   db[n] = sum over r of dz[r, n]       (the bias gradient)
// Three kernels' worth of memory traffic and dispatches become one: on lavapipe each
// dispatch costs about 50 us before any arithmetic. Needs act.wgsl in front.

struct Params {
    rows: u32,
    cols: u32,
    act: u32,
    alpha: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dz: array<f32>;
@group(0) @binding(4) var<storage, read_write> dzt: array<f32>;
@group(0) @binding(5) var<storage, read_write> db: array<f32>;

// Without a bias, db is bound to another output and never written.
override BIAS: bool = true;

@compute @workgroup_size(64)
fn dense_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = gid.x + gid.y * nwg.x * 64u;
    if n >= p.cols {
        return;
    }
    // Adjacent invocations take adjacent columns, so each row's loads are contiguous.
    var sum = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        let e = r * p.cols + n;
        let g = dy[e] * act_derivative_from_output(p.act, p.alpha, y[e]);
        dz[e] = g;
        dzt[n * p.rows + r] = g;
        sum += g;
    }
    if BIAS {
        db[n] = sum;
    }
}
