// C[M,N] = op(A) * op(B) (+ bias[N]) then activation, where op is identity or transpose.
// Logical A is [M,K], logical B is [K,N]. Storage: A is [M,K] (TA = 0) or [K,M] (TA = 1);
// B is [K,N] (TB = 0) or [N,K] (TB = 1). All row-major.
//
// Three kernels, picked per adapter by src/ops/matmul.rs:
//   naive   - one output per invocation (the benchmark's baseline);
//   blocked - a 4x4 output block per invocation in registers, no workgroup memory: fast on
//             CPU adapters (lavapipe), where workgroupBarrier is very expensive;
//   tiled   - 64x64 tiles staged through workgroup memory, 4x4 outputs per invocation:
//             the kernel real GPUs want.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    act: u32,
    alpha: f32,
    // Read by the lane kernels only (matmul_lane.wgsl); these take pipeline constants.
    flags: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

override TA: bool = false;
override TB: bool = false;
override BIAS: bool = false;
// Store C transposed ([N, M]): lets a weight gradient dW = dZ^T X be computed as the
// faster-running X^T dZ and still land in W's [out, in] layout.
override TC: bool = false;

fn c_index(row: u32, col: u32) -> u32 {
    if TC {
        return col * p.m + row;
    }
    return row * p.n + col;
}

fn a_at(row: u32, kk: u32) -> f32 {
    if TA {
        return a[kk * p.m + row];
    }
    return a[row * p.k + kk];
}

fn b_at(kk: u32, col: u32) -> f32 {
    if TB {
        return b[col * p.k + kk];
    }
    return b[kk * p.n + col];
}

fn epilogue(col: u32, v: f32) -> f32 {
    var x = v;
    if BIAS {
        x += bias[col];
    }
    return act_forward(p.act, p.alpha, x);
}

@compute @workgroup_size(16, 16)
fn naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.y;
    let col = gid.x;
    if row >= p.m || col >= p.n {
        return;
    }
    var acc = 0.0;
    for (var kk = 0u; kk < p.k; kk++) {
        acc += a_at(row, kk) * b_at(kk, col);
    }
    c[c_index(row, col)] = epilogue(col, acc);
}

fn store_row(row: u32, col0: u32, v: vec4<f32>) {
    if row >= p.m {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let col = col0 + j;
        if col < p.n {
            c[c_index(row, col)] = epilogue(col, v[j]);
        }
    }
}

// Each invocation: rows 4*gid.y .. +4, cols 4*gid.x .. +4. Loads clamp to the last
// row/column so the inner loop has no branches; out-of-range results are not stored.
@compute @workgroup_size(8, 8)
fn blocked(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if row0 >= p.m || col0 >= p.n {
        return;
    }
    let r = vec4<u32>(min(row0, p.m - 1u), min(row0 + 1u, p.m - 1u), min(row0 + 2u, p.m - 1u), min(row0 + 3u, p.m - 1u));
    let q = vec4<u32>(min(col0, p.n - 1u), min(col0 + 1u, p.n - 1u), min(col0 + 2u, p.n - 1u), min(col0 + 3u, p.n - 1u));
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let bv = vec4<f32>(b_at(kk, q.x), b_at(kk, q.y), b_at(kk, q.z), b_at(kk, q.w));
        c0 += a_at(r.x, kk) * bv;
        c1 += a_at(r.y, kk) * bv;
        c2 += a_at(r.z, kk) * bv;
        c3 += a_at(r.w, kk) * bv;
    }
    store_row(row0, col0, c0);
    store_row(row0 + 1u, col0, c1);
    store_row(row0 + 2u, col0, c2);
    store_row(row0 + 3u, col0, c3);
}

const TILE: u32 = 64u;
const BK: u32 = 16u;
var<workgroup> sa: array<f32, 1024>; // [BK][TILE]: A tile, k-major so reads along m are contiguous
var<workgroup> sb: array<f32, 1024>; // [BK][TILE]

fn a_safe(row: u32, kk: u32) -> f32 {
    if row < p.m && kk < p.k {
        return a_at(row, kk);
    }
    return 0.0;
}

fn b_safe(kk: u32, col: u32) -> f32 {
    if kk < p.k && col < p.n {
        return b_at(kk, col);
    }
    return 0.0;
}

// 16x16 invocations per 64x64 tile, each computing a 4x4 block strided by 16 so the
// workgroup-memory reads of neighbouring invocations fall in different banks.
@compute @workgroup_size(16, 16)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tile_row = wid.y * TILE;
    let tile_col = wid.x * TILE;
    let t = lid.y * 16u + lid.x;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // 256 invocations load 1024 values of each tile: 4 each.
        for (var i = 0u; i < 4u; i++) {
            let e = t + i * 256u;
            let kk = e / TILE;
            let mm = e % TILE;
            sa[e] = a_safe(tile_row + mm, k0 + kk);
            sb[e] = b_safe(k0 + kk, tile_col + mm);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let bv = vec4<f32>(sb[kk * TILE + lid.x], sb[kk * TILE + lid.x + 16u], sb[kk * TILE + lid.x + 32u], sb[kk * TILE + lid.x + 48u]);
            for (var i = 0u; i < 4u; i++) {
                acc[i] += sa[kk * TILE + lid.y + i * 16u] * bv;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = tile_row + lid.y + i * 16u;
        if row < p.m {
            for (var j = 0u; j < 4u; j++) {
                let col = tile_col + lid.x + j * 16u;
                if col < p.n {
                    c[c_index(row, col)] = epilogue(col, acc[i][j]);
                }
            }
        }
    }
}
