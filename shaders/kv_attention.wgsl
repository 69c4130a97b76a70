// Attention of new positions over a key/value cache (see src/ops/kv_attention.rs): the
// in-projection's rows of TN new positions per sample are appended to the cache at
// positions p.at.., then each new query row, at position p.at + i, attends to the cached
// positions 0..=p.at + i. A cache row is laid out as the in-projection writes it,
// [q | k | v], 3D values, so a prefill copies whole rows.
//
// `attend` is the fused forward's loop (one invocation per query row, a workgroup per
// block of rows of one (sample, head), an online softmax) over all C cache positions, the
// later ones masked: every loop bound is a pipeline constant and the position only moves
// the mask, so one pipeline serves every step of a generation (lavapipe recompiles a
// shader whose loops or branches a uniform value decides). When the new rows fit one
// block (FUSED: decoding a token, a short prompt), its lanes append their own rows'
// keys and values of its head first, saving the `append` dispatch; longer prompts span
// several workgroups, which would read rows another one has not written yet.

struct Params {
    // The first new position.
    at: u32,
    // 1 / sqrt(DH).
    scale: f32,
}

// Samples.
override B: u32 = 1u;
// New positions per sample.
override TN: u32 = 1u;
// Positions the cache holds per sample (the model's context).
override C: u32 = 1u;
override H: u32 = 1u;
override DH: u32 = 1u;
// Width of the output rows (H * DH); cache and projection rows are 3D wide.
override D: u32 = 1u;
override WG: u32 = 8u;
// Whether `attend` appends the new rows itself (TN <= WG).
override FUSED: bool = false;

// The head width the per-row arrays hold; the host refuses wider heads on the GPU.
const MAXDH: u32 = 128u;
// The mask value: exp of it minus any real score is 0, and it stays finite.
const MASKED: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;

// ---- append: input qkv [B*TN, 3D]; output cache [B*C, 3D] ----

@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> cache_w: array<f32>;

// One invocation per value of the new rows.
@compute @workgroup_size(64)
fn append(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 64u;
    let e1 = min(e, arrayLength(&qkv) - 1u);
    let row = e1 / (3u * D);
    let b = row / TN;
    let i = row % TN;
    let dst = (b * C + p.at + i) * 3u * D + e1 % (3u * D);
    if e < arrayLength(&qkv) {
        cache_w[dst] = qkv[e];
    }
}

// ---- attend: input qkv [B*TN, 3D]; outputs cache [B*C, 3D] (read, or appended to when
// FUSED), o [B*TN, D] ----

@group(0) @binding(3) var<storage, read_write> o: array<f32>;

@compute @workgroup_size(WG)
fn attend(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.y;
    let b = min(wid.z, B - 1u);
    let i = wid.x * WG + li;
    // Lanes past the last row compute the last row again and store nothing.
    let row = min(i, TN - 1u);
    let qb = (b * TN + row) * 3u * D + h * DH;
    if FUSED && i < TN {
        let cb = (b * C + p.at + i) * 3u * D + h * DH;
        for (var c = 0u; c < DH; c++) {
            cache_w[cb + D + c] = qkv[qb + D + c];
            cache_w[cb + 2u * D + c] = qkv[qb + 2u * D + c];
        }
    }
    storageBarrier();
    var q: array<f32, MAXDH>;
    var acc: array<f32, MAXDH>;
    for (var c = 0u; c < DH; c++) {
        q[c] = qkv[qb + c] * p.scale;
        acc[c] = 0.0;
    }
    let kb = b * C * 3u * D + D + h * DH;
    let vb = kb + D;
    let last = p.at + row;
    var m = MASKED;
    var l = 0.0;
    for (var j = 0u; j < C; j++) {
        let jj = j * 3u * D;
        var dot = 0.0;
        for (var c = 0u; c < DH; c++) {
            dot += q[c] * cache_w[kb + jj + c];
        }
        let sc = select(dot, MASKED, j > last);
        let mx = max(m, sc);
        let corr = exp(m - mx);
        let e = exp(sc - mx);
        l = l * corr + e;
        for (var c = 0u; c < DH; c++) {
            acc[c] = acc[c] * corr + e * cache_w[vb + jj + c];
        }
        m = mx;
    }
    if i < TN {
        let ob = (b * TN + i) * D + h * DH;
        let inv = 1.0 / l;
        for (var c = 0u; c < DH; c++) {
            o[ob + c] = acc[c] * inv;
        }
    }
}
