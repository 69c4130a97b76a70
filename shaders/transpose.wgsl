// out[c, r] = x[r, c]: a [rows, cols] matrix transposed to [cols, rows].
// Lets a weight gradient contract over the batch with a plain A * B product.

struct Params {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn transpose(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 256u;
    if e >= p.rows * p.cols {
        return;
    }
    // e walks the output row-major, so the writes are contiguous.
    let c = e / p.rows;
    let r = e % p.rows;
    out[e] = x[r * p.cols + c];
}
