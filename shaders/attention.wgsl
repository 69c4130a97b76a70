// Multi-head scaled dot-product attention over projected rows:
//   o_i = sum_j softmax_j(q_i . k_j * scale) v_j      per (batch, head, query row i)
// with an optional causal mask (key j > query i masked out). Queries come from rows of
// `qs` (QS values per row, head h at column QO + h * DH), keys and values from rows of
// `kvs` (KS values per row, keys at KO + h * DH, values at VO + h * DH): the layout the
// in-projection [q | k | v] writes, so no split or transpose runs between them.
//
// The fused kernels give one invocation to one row, and a workgroup to WG rows of one
// (batch, head): every key or query row the loop visits is then one address for the whole
// workgroup, which lavapipe loads once rather than once per lane. The forward keeps a
// running max and sum over the keys (online softmax) and saves only each row's
// logsumexp; the backward recomputes the probabilities from it, one pass over the keys for
// dQ (which also saves delta_i = dO_i . O_i) and one over the queries for dK and dV, so no
// T x S matrix is stored. `scores` and `pv` are the plain, materialising path.
//
// Every loop bound is a pipeline constant, and no branch reads the uniform block: lavapipe
// recompiles a shader whose loops or branches a uniform value decides at every dispatch.

struct Params {
    batch: u32,
    // 1 / sqrt(DH).
    scale: f32,
}

override T: u32 = 1u;
override S: u32 = 1u;
override H: u32 = 1u;
override DH: u32 = 1u;
// Width of the output rows (H * DH).
override D: u32 = 1u;
override QS: u32 = 3u;
override QO: u32 = 0u;
override KS: u32 = 3u;
override KO: u32 = 1u;
override VO: u32 = 2u;
override CAUSAL: bool = false;
override WG: u32 = 32u;

// The head width the per-row arrays hold; the host refuses wider heads on the GPU.
const MAXDH: u32 = 128u;
// The mask value: exp of it minus any real score is 0, and it stays finite.
const MASKED: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;

// ---- forward: inputs qs, kvs; outputs o [B*T, D], lse [B*H*T] ----

@group(0) @binding(1) var<storage, read> qs: array<f32>;
@group(0) @binding(2) var<storage, read> kvs: array<f32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;

// The keys a workgroup of query rows from i0 needs: all, or (causal) up to its last row.
fn key_end(i0: u32) -> u32 {
    return select(S, min(S, i0 + WG), CAUSAL);
}

fn masked(j: u32, i: u32) -> bool {
    return j >= S || (CAUSAL && j > i);
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.y;
    let b = min(wid.z, p.batch - 1u);
    let i0 = wid.x * WG;
    let i = i0 + li;
    // Lanes past the last row compute the last row again and store nothing.
    let row = min(i, T - 1u);
    let qb = (b * T + row) * QS + QO + h * DH;
    var q: array<f32, MAXDH>;
    var acc: array<f32, MAXDH>;
    for (var c = 0u; c < DH; c++) {
        q[c] = qs[qb + c] * p.scale;
        acc[c] = 0.0;
    }
    let kb = b * S * KS + KO + h * DH;
    let vb = b * S * KS + VO + h * DH;
    var m = MASKED;
    var l = 0.0;
    let end = key_end(i0);
    // One key at a time, rescaling as the running max moves: only the loops over the head
    // width index the per-row arrays, and those unroll (an array indexed by a loop that
    // does not unroll lives in memory, each access a loop over the lanes on lavapipe).
    for (var j = 0u; j < end; j++) {
        let jj = min(j, S - 1u) * KS;
        var dot = 0.0;
        for (var c = 0u; c < DH; c++) {
            dot += q[c] * kvs[kb + jj + c];
        }
        let sc = select(dot, MASKED, masked(j, row));
        let mx = max(m, sc);
        let corr = exp(m - mx);
        let e = exp(sc - mx);
        l = l * corr + e;
        for (var c = 0u; c < DH; c++) {
            acc[c] = acc[c] * corr + e * kvs[vb + jj + c];
        }
        m = mx;
    }
    if i < T {
        let ob = (b * T + i) * D + h * DH;
        let inv = 1.0 / l;
        for (var c = 0u; c < DH; c++) {
            o[ob + c] = acc[c] * inv;
        }
        lse[(b * H + h) * T + i] = m + log(l);
    }
}

// ---- forward4: forward's work for head widths that are multiples of 4, with vec4 loads ----
// On lavapipe every storage load runs as a loop over the SIMD lanes whatever its address,
// so the cost per key is the loads of k_j and v_j: a quarter as many as vec4s.

@group(0) @binding(1) var<storage, read> qs4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> kvs4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> o4: array<vec4<f32>>;

const MAXDH4: u32 = MAXDH / 4u;

@compute @workgroup_size(WG)
fn forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.y;
    let b = min(wid.z, p.batch - 1u);
    let i0 = wid.x * WG;
    let i = i0 + li;
    let row = min(i, T - 1u);
    let dh4 = DH / 4u;
    let qb = ((b * T + row) * QS + QO + h * DH) / 4u;
    var q: array<vec4<f32>, MAXDH4>;
    var acc: array<vec4<f32>, MAXDH4>;
    for (var c = 0u; c < dh4; c++) {
        q[c] = qs4[qb + c] * p.scale;
        acc[c] = vec4<f32>(0.0);
    }
    let kb = (b * S * KS + KO + h * DH) / 4u;
    let vb = (b * S * KS + VO + h * DH) / 4u;
    var m = MASKED;
    var l = 0.0;
    let end = key_end(i0);
    for (var j = 0u; j < end; j++) {
        let jj = min(j, S - 1u) * (KS / 4u);
        var d4 = vec4<f32>(0.0);
        for (var c = 0u; c < dh4; c++) {
            d4 += q[c] * kvs4[kb + jj + c];
        }
        let sc = select(d4.x + d4.y + d4.z + d4.w, MASKED, masked(j, row));
        let mx = max(m, sc);
        let corr = exp(m - mx);
        let e = exp(sc - mx);
        l = l * corr + e;
        for (var c = 0u; c < dh4; c++) {
            acc[c] = acc[c] * corr + e * kvs4[vb + jj + c];
        }
        m = mx;
    }
    if i < T {
        let ob = ((b * T + i) * D + h * DH) / 4u;
        let inv = 1.0 / l;
        for (var c = 0u; c < dh4; c++) {
            o4[ob + c] = acc[c] * inv;
        }
        lse[(b * H + h) * T + i] = m + log(l);
    }
}

// ---- backward, queries: inputs qs, kvs, o, lse, dout; outputs dqs (qs's layout), delta ----

@group(0) @binding(3) var<storage, read> bo: array<f32>;
@group(0) @binding(4) var<storage, read> blse: array<f32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
@group(0) @binding(6) var<storage, read_write> dqs: array<f32>;
@group(0) @binding(7) var<storage, read_write> delta: array<f32>;

@compute @workgroup_size(WG)
fn backward_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.y;
    let b = min(wid.z, p.batch - 1u);
    let i0 = wid.x * WG;
    let i = i0 + li;
    let row = min(i, T - 1u);
    let qb = (b * T + row) * QS + QO + h * DH;
    let ob = (b * T + row) * D + h * DH;
    var q: array<f32, MAXDH>;
    var g: array<f32, MAXDH>;
    var dq: array<f32, MAXDH>;
    var kj: array<f32, MAXDH>;
    var di = 0.0;
    for (var c = 0u; c < DH; c++) {
        q[c] = qs[qb + c] * p.scale;
        g[c] = dout[ob + c];
        di += g[c] * bo[ob + c];
        dq[c] = 0.0;
    }
    let r = (b * H + h) * T + row;
    let lr = blse[r];
    let kb = b * S * KS + KO + h * DH;
    let vb = b * S * KS + VO + h * DH;
    let end = key_end(i0);
    for (var j = 0u; j < end; j++) {
        var s = 0.0;
        var dp = 0.0;
        for (var c = 0u; c < DH; c++) {
            kj[c] = kvs[kb + j * KS + c];
            s += q[c] * kj[c];
            dp += g[c] * kvs[vb + j * KS + c];
        }
        let pr = select(exp(s - lr), 0.0, masked(j, row));
        let ds = pr * (dp - di);
        for (var c = 0u; c < DH; c++) {
            dq[c] += ds * kj[c];
        }
    }
    if i < T {
        let db = (b * T + i) * QS + QO + h * DH;
        for (var c = 0u; c < DH; c++) {
            dqs[db + c] = dq[c] * p.scale;
        }
        delta[r] = di;
    }
}

// ---- backward, keys and values: inputs qs, kvs, lse, dout, delta; output dkvs (kvs's layout) ----

@group(0) @binding(3) var<storage, read> klse: array<f32>;
@group(0) @binding(4) var<storage, read> kdout: array<f32>;
@group(0) @binding(5) var<storage, read> kdelta: array<f32>;
@group(0) @binding(6) var<storage, read_write> dkvs: array<f32>;

@compute @workgroup_size(WG)
fn backward_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.y;
    let b = min(wid.z, p.batch - 1u);
    let j0 = wid.x * WG;
    let j = j0 + li;
    let col = min(j, S - 1u);
    let kb = (b * S + col) * KS + KO + h * DH;
    let vb = (b * S + col) * KS + VO + h * DH;
    var k: array<f32, MAXDH>;
    var v: array<f32, MAXDH>;
    var dk: array<f32, MAXDH>;
    var dv: array<f32, MAXDH>;
    var qi: array<f32, MAXDH>;
    var gi: array<f32, MAXDH>;
    for (var c = 0u; c < DH; c++) {
        k[c] = kvs[kb + c] * p.scale;
        v[c] = kvs[vb + c];
        dk[c] = 0.0;
        dv[c] = 0.0;
    }
    // Causal: no query before the workgroup's first key sees any of its keys.
    let start = select(0u, min(j0, T), CAUSAL);
    for (var i = start; i < T; i++) {
        let qb = (b * T + i) * QS + QO + h * DH;
        let ob = (b * T + i) * D + h * DH;
        let r = (b * H + h) * T + i;
        var s = 0.0;
        var dp = 0.0;
        for (var c = 0u; c < DH; c++) {
            qi[c] = qs[qb + c];
            gi[c] = kdout[ob + c];
            s += qi[c] * k[c];
            dp += gi[c] * v[c];
        }
        let pr = select(exp(s - klse[r]), 0.0, masked(j, i));
        let ds = pr * (dp - kdelta[r]);
        for (var c = 0u; c < DH; c++) {
            dv[c] += pr * gi[c];
            dk[c] += ds * qi[c];
        }
    }
    if j < S {
        for (var c = 0u; c < DH; c++) {
            dkvs[kb + c] = dk[c] * p.scale;
            dkvs[vb + c] = dv[c];
        }
    }
}

// ---- backward_q4, backward_kv4: the backward passes with vec4 loads (head widths % 4 == 0) ----

@group(0) @binding(3) var<storage, read> bo4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> dout4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> dqs4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn backward_q4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.y;
    let b = min(wid.z, p.batch - 1u);
    let i0 = wid.x * WG;
    let i = i0 + li;
    let row = min(i, T - 1u);
    let dh4 = DH / 4u;
    let qb = ((b * T + row) * QS + QO + h * DH) / 4u;
    let ob = ((b * T + row) * D + h * DH) / 4u;
    var q: array<vec4<f32>, MAXDH4>;
    var g: array<vec4<f32>, MAXDH4>;
    var dq: array<vec4<f32>, MAXDH4>;
    var kj: array<vec4<f32>, MAXDH4>;
    var d4 = vec4<f32>(0.0);
    for (var c = 0u; c < dh4; c++) {
        q[c] = qs4[qb + c] * p.scale;
        g[c] = dout4[ob + c];
        d4 += g[c] * bo4[ob + c];
        dq[c] = vec4<f32>(0.0);
    }
    let di = d4.x + d4.y + d4.z + d4.w;
    let r = (b * H + h) * T + row;
    let lr = blse[r];
    let kb = (b * S * KS + KO + h * DH) / 4u;
    let vb = (b * S * KS + VO + h * DH) / 4u;
    let end = key_end(i0);
    for (var j = 0u; j < end; j++) {
        let jj = j * (KS / 4u);
        var s4 = vec4<f32>(0.0);
        var p4 = vec4<f32>(0.0);
        for (var c = 0u; c < dh4; c++) {
            kj[c] = kvs4[kb + jj + c];
            s4 += q[c] * kj[c];
            p4 += g[c] * kvs4[vb + jj + c];
        }
        let s = s4.x + s4.y + s4.z + s4.w;
        let dp = p4.x + p4.y + p4.z + p4.w;
        let pr = select(exp(s - lr), 0.0, masked(j, row));
        let ds = pr * (dp - di);
        for (var c = 0u; c < dh4; c++) {
            dq[c] += ds * kj[c];
        }
    }
    if i < T {
        let db = ((b * T + i) * QS + QO + h * DH) / 4u;
        for (var c = 0u; c < dh4; c++) {
            dqs4[db + c] = dq[c] * p.scale;
        }
        delta[r] = di;
    }
}

@group(0) @binding(4) var<storage, read> kdout4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> dkvs4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn backward_kv4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.y;
    let b = min(wid.z, p.batch - 1u);
    let j0 = wid.x * WG;
    let j = j0 + li;
    let col = min(j, S - 1u);
    let dh4 = DH / 4u;
    let kb = ((b * S + col) * KS + KO + h * DH) / 4u;
    let vb = ((b * S + col) * KS + VO + h * DH) / 4u;
    var k: array<vec4<f32>, MAXDH4>;
    var v: array<vec4<f32>, MAXDH4>;
    var dk: array<vec4<f32>, MAXDH4>;
    var dv: array<vec4<f32>, MAXDH4>;
    var qi: array<vec4<f32>, MAXDH4>;
    var gi: array<vec4<f32>, MAXDH4>;
    for (var c = 0u; c < dh4; c++) {
        k[c] = kvs4[kb + c] * p.scale;
        v[c] = kvs4[vb + c];
        dk[c] = vec4<f32>(0.0);
        dv[c] = vec4<f32>(0.0);
    }
    let start = select(0u, min(j0, T), CAUSAL);
    for (var i = start; i < T; i++) {
        let qb = ((b * T + i) * QS + QO + h * DH) / 4u;
        let ob = ((b * T + i) * D + h * DH) / 4u;
        let r = (b * H + h) * T + i;
        var s4 = vec4<f32>(0.0);
        var p4 = vec4<f32>(0.0);
        for (var c = 0u; c < dh4; c++) {
            qi[c] = qs4[qb + c];
            gi[c] = kdout4[ob + c];
            s4 += qi[c] * k[c];
            p4 += gi[c] * v[c];
        }
        let s = s4.x + s4.y + s4.z + s4.w;
        let dp = p4.x + p4.y + p4.z + p4.w;
        let pr = select(exp(s - klse[r]), 0.0, masked(j, i));
        let ds = pr * (dp - kdelta[r]);
        for (var c = 0u; c < dh4; c++) {
            dv[c] += pr * gi[c];
            dk[c] += ds * qi[c];
        }
    }
    if j < S {
        for (var c = 0u; c < dh4; c++) {
            dkvs4[kb + c] = dk[c] * p.scale;
            dkvs4[vb + c] = dv[c];
        }
    }
}

// ---- the plain path: scores [B*H*T, S] materialised, softmax by the activation op ----

@group(0) @binding(3) var<storage, read_write> scores: array<f32>;

// One invocation per score: scores[(b, h, i), j] = q_i . k_j * scale, or MASKED.
@compute @workgroup_size(64)
fn scores_naive(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 64u;
    let bh = min(e / (T * S), p.batch * H - 1u);
    let b = bh / H;
    let h = bh % H;
    let i = (e / S) % T;
    let j = e % S;
    let qb = (b * T + i) * QS + QO + h * DH;
    let kb = (b * S + j) * KS + KO + h * DH;
    var dot = 0.0;
    for (var c = 0u; c < DH; c++) {
        dot += qs[qb + c] * kvs[kb + c];
    }
    if e < arrayLength(&scores) {
        scores[e] = select(dot * p.scale, MASKED, masked(j, i));
    }
}

@group(0) @binding(1) var<storage, read> probs: array<f32>;
@group(0) @binding(2) var<storage, read> pkvs: array<f32>;
@group(0) @binding(3) var<storage, read_write> po: array<f32>;

// One invocation per output value: o[(b, i), h * DH + c] = sum_j P[(b, h, i), j] v_j[c].
@compute @workgroup_size(64)
fn pv_naive(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 64u;
    let bi = min(e / D, p.batch * T - 1u);
    let b = bi / T;
    let i = bi % T;
    let h = (e % D) / DH;
    let c = e % DH;
    let pb = ((b * H + h) * T + i) * S;
    var acc = 0.0;
    for (var j = 0u; j < S; j++) {
        acc += probs[pb + j] * pkvs[(b * S + j) * KS + VO + h * DH + c];
    }
    if e < arrayLength(&po) {
        po[e] = acc;
    }
}
