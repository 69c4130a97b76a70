// Bias broadcast over rows and its gradient, the column sum.
// Entry points bind only the variables they use: binding 2 is the bias for
// bias_add and the read-write target of the one-input kernels.

struct Params {
    rows: u32,
    cols: u32,
    // Rows each col_sum invocation adds up.
    chunk: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read_write> io: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// out = a + bias[col]
@compute @workgroup_size(256)
fn bias_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if i >= p.rows * p.cols {
        return;
    }
    out[i] = a[i] + bias[i % p.cols];
}

// io += a[col], with a holding the bias.
@compute @workgroup_size(256)
fn bias_add_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if i >= p.rows * p.cols {
        return;
    }
    io[i] += a[i % p.cols];
}

// io[k, col] = sum of a[r, col] over the k-th run of `chunk` rows. Neighbouring
// invocations take neighbouring columns so their loads share cache lines.
@compute @workgroup_size(256)
fn col_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat(gid, nwg);
    // At least one run, so that zero rows still write zeros.
    let chunks = max(1u, (p.rows + p.chunk - 1u) / p.chunk);
    if t >= chunks * p.cols {
        return;
    }
    let col = t % p.cols;
    let k = t / p.cols;
    let end = min(p.rows, (k + 1u) * p.chunk);
    var s = 0.0;
    for (var r = k * p.chunk; r < end; r++) {
        s += a[r * p.cols + col];
    }
    io[t] = s;
}
