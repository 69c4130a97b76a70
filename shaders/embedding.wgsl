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
    // The table row of a sequence's first position (positional; 0 but in decoding).
    start: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// Outputs of the entries with one input (positional_grad, bucket_count) and none
// (bucket_scan), and the third input and output of lookup_grad.
@group(0) @binding(2) var<storage, read_write> out1: array<f32>;
@group(0) @binding(1) var<storage, read_write> rw0: array<f32>;
@group(0) @binding(3) var<storage, read> c3: array<f32>;
@group(0) @binding(4) var<storage, read_write> out4: array<f32>;

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

// The gradient into the table sorts the batch's tokens by row (a counting sort: counts,
// their prefix sums, then each row's tokens in token order), so that each table value
// sums only its own row's tokens, in token order: vocab * tokens work for the sort and
// tokens * dim for the sums, instead of vocab * dim * tokens for a scan per value.

// counts[r] = the tokens of row r; a = ids, out1 = counts (the offsets, [rows + 1]).
@compute @workgroup_size(256)
fn bucket_count(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = index(gid, nwg);
    if r >= p.rows {
        return;
    }
    var count = 0u;
    for (var t = 0u; t < p.n; t++) {
        count += select(0u, 1u, row_of(a[t]) == r);
    }
    out1[r] = f32(count);
}

// The counts in place by their exclusive prefix sums, and offsets[rows] = tokens; one
// invocation (rows steps).
@compute @workgroup_size(1)
fn bucket_scan(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x != 0u {
        return;
    }
    var sum = 0u;
    for (var r = 0u; r < p.rows; r++) {
        let count = u32(rw0[r]);
        rw0[r] = f32(sum);
        sum += count;
    }
    rw0[p.rows] = f32(sum);
}

// positions[offsets[r]..offsets[r + 1]] = the tokens of row r, in token order;
// a = ids, b = offsets, out = positions.
@compute @workgroup_size(256)
fn bucket_fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = index(gid, nwg);
    if r >= p.rows {
        return;
    }
    var k = u32(b[r]);
    for (var t = 0u; t < p.n; t++) {
        if row_of(a[t]) == r {
            out[k] = f32(t);
            k++;
        }
    }
}

// dtable[r, c] = the sum of dy[t, c] over row r's tokens t, in token order;
// a = offsets, b = positions, c3 = dy, out4 = dtable. The bounds are clamped to the
// tokens, so no loop runs past them whatever the buffers hold.
@compute @workgroup_size(256)
fn lookup_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.rows * p.dim {
        return;
    }
    let r = i / p.dim;
    let col = i % p.dim;
    let hi = min(u32(a[r + 1u]), p.n);
    let lo = min(u32(a[r]), hi);
    var acc = 0.0;
    for (var k = lo; k < hi; k++) {
        acc += c3[u32(b[k]) * p.dim + col];
    }
    out4[i] = acc;
}

// out[s, j] = x[s, j] + table[j] for j < period (position j / dim); a = x, b = table.
@compute @workgroup_size(256)
fn positional(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.n * p.period {
        return;
    }
    out[i] = a[i] + b[p.start * p.dim + i % p.period];
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
