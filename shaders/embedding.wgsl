// Embedding lookups and their gradients. Token ids arrive as f32 (exact below 2^24).
// WGSL has no f32 atomics, so each gradient value has one invocation that adds up its
// terms in a fixed order: the same bits on every run, with no scatter.

struct Params {
    // Tokens (lookups) or sequences in the batch (positional).
    n: u32,
    // Width of a table row.
    dim: u32,
    // Rows of the table: the vocabulary, or the longest sequence.
    rows: u32,
    // Values of one sequence: positions * dim (positional).
    period: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// positional_grad's output: it has one input.
@group(0) @binding(2) var<storage, read_write> out1: array<f32>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// A token's row: ids outside [0, rows) are clamped into it (the GPU cannot report
// errors; the CPU path refuses them), fractions are truncated.
fn row_of(id: f32) -> u32 {
    return min(u32(max(id, 0.0)), p.rows - 1u);
}

// out[t, c] = table[ids[t], c]; a = ids, b = table.
@compute @workgroup_size(256)
fn lookup(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.n * p.dim {
        return;
    }
    let t = i / p.dim;
    out[i] = b[row_of(a[t]) * p.dim + i % p.dim];
}

// dtable[r, c] = sum of dy[t, c] over the tokens t with ids[t] = r, in token order;
// a = ids, b = dy. One invocation per table value scans the batch's ids.
@compute @workgroup_size(256)
fn lookup_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.rows * p.dim {
        return;
    }
    let r = i / p.dim;
    let c = i % p.dim;
    var acc = 0.0;
    for (var t = 0u; t < p.n; t++) {
        if row_of(a[t]) == r {
            acc += b[t * p.dim + c];
        }
    }
    out[i] = acc;
}

// out[s, j] = x[s, j] + table[j] for j < period (position j / dim); a = x, b = table.
@compute @workgroup_size(256)
fn positional(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.n * p.period {
        return;
    }
    out[i] = a[i] + b[i % p.period];
}

// dtable[j] = sum over the sequences s of dy[s, j] for the positions in use, 0 past them;
// a = dy.
@compute @workgroup_size(256)
fn positional_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.rows * p.dim {
        return;
    }
    var acc = 0.0;
    if i < p.period {
        for (var s = 0u; s < p.n; s++) {
            acc += a[s * p.period + i];
        }
    }
    out1[i] = acc;
}
