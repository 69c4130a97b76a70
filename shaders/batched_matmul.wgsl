// Strided batched products for stacked trials: C_t = act(op(A_t) op(B_t) + bias_t) for
// every trial t = global_invocation_id.z. Each operand has its own trial stride and row
// stride, so one dispatch serves K models of one shape whether their tensors are stacked
// ([K, rows, cols]: trial stride rows * cols), side by side in one wide matrix
// ([rows, K * cols]: trial stride cols, row stride K * cols) or shared (trial stride 0).
// Logical A is [M,K] and B is [K,N], stored as in matmul.wgsl (TA, TB); 4x4 outputs
// per invocation in registers, as matmul.wgsl's blocked kernel. Needs act.wgsl in front.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    act: u32,
    alpha: f32,
    // Elements between consecutive trials' matrices (0: one matrix shared by all).
    sa: u32,
    sb: u32,
    sc: u32,
    sbias: u32,
    // Elements between consecutive stored rows.
    lda: u32,
    ldb: u32,
    ldc: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

override TA: bool = false;
override TB: bool = false;
override BIAS: bool = false;

fn a_at(t: u32, row: u32, kk: u32) -> f32 {
    if TA {
        return a[t * p.sa + kk * p.lda + row];
    }
    return a[t * p.sa + row * p.lda + kk];
}

fn b_at(t: u32, kk: u32, col: u32) -> f32 {
    if TB {
        return b[t * p.sb + col * p.ldb + kk];
    }
    return b[t * p.sb + kk * p.ldb + col];
}

fn store_row(t: u32, row: u32, col0: u32, v: vec4<f32>) {
    if row >= p.m {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let col = col0 + j;
        if col < p.n {
            var x = v[j];
            if BIAS {
                x += bias[t * p.sbias + col];
            }
            c[t * p.sc + row * p.ldc + col] = act_forward(p.act, p.alpha, x);
        }
    }
}

// Rows 4*gid.y .. +4, cols 4*gid.x .. +4 of trial gid.z. Loads clamp to the last
// row/column so the inner loop has no branches; out-of-range results are not stored.
@compute @workgroup_size(8, 8)
fn batched(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.z;
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if row0 >= p.m || col0 >= p.n {
        return;
    }
    let r = min(vec4<u32>(row0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.m - 1u));
    let q = min(vec4<u32>(col0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u));
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let bv = vec4<f32>(b_at(t, kk, q.x), b_at(t, kk, q.y), b_at(t, kk, q.z), b_at(t, kk, q.w));
        c0 += a_at(t, r.x, kk) * bv;
        c1 += a_at(t, r.y, kk) * bv;
        c2 += a_at(t, r.z, kk) * bv;
        c3 += a_at(t, r.w, kk) * bv;
    }
    store_row(t, row0, col0, c0);
    store_row(t, row0 + 1u, col0, c1);
    store_row(t, row0 + 2u, col0, c2);
    store_row(t, row0 + 3u, col0, c3);
}
