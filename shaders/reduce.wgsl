// Reductions: the sum of a whole tensor (in passes of one partial sum per block)
// and the index of each row's maximum.

struct Params {
    // Elements for sum_blocks, rows for argmax.
    n: u32,
    cols: u32,
    // Factor applied to each block's sum: 1, or 1/len for the last pass of a mean.
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const SUM_WG: u32 = 256u;
// Elements each invocation adds before the tree; a block is SUM_WG * PER elements.
// On lavapipe barriers dominate: 64 per invocation summed 1e6 elements in ~3 ms, 8 in ~8-15 ms.
const PER: u32 = 64u;
const ROW_WG: u32 = 64u;
const NONE: u32 = 0xffffffffu;

var<workgroup> part: array<f32, SUM_WG>;
var<workgroup> best_v: array<f32, ROW_WG>;
var<workgroup> best_i: array<u32, ROW_WG>;

// out[block] = scale * sum of the block's elements; blocks fold over a 2-D grid.
@compute @workgroup_size(SUM_WG)
fn sum_blocks(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let block = wid.x + wid.y * nwg.x;
    // An empty input still has one block, which writes the zero sum.
    let blocks = max(1u, (p.n + SUM_WG * PER - 1u) / (SUM_WG * PER));
    if block >= blocks {
        return;
    }
    let start = block * SUM_WG * PER;
    var acc = 0.0;
    for (var k = 0u; k < PER; k++) {
        // Consecutive invocations read consecutive elements.
        let i = start + k * SUM_WG + lid;
        if i < p.n {
            acc += x[i];
        }
    }
    part[lid] = acc;
    workgroupBarrier();
    for (var s = SUM_WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            part[lid] += part[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out[block] = part[0] * p.scale;
    }
}

// True when (v, i) beats (bv, bi): larger, or as large at a lower index.
fn beats(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return i != NONE && (bi == NONE || v > bv || (v == bv && i < bi));
}

// argmax of each row, one invocation per row: for narrow rows a workgroup would sit idle.
@compute @workgroup_size(256)
fn argmax_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * 256u;
    if row >= p.n {
        return;
    }
    let base = row * p.cols;
    var bv = x[base];
    var bi = 0u;
    for (var c = 1u; c < p.cols; c++) {
        let v = x[base + c];
        if v > bv {
            bv = v;
            bi = c;
        }
    }
    out[row] = f32(bi);
}

// argmax of each row, one workgroup per row; rows fold over a 2-D grid past 65535.
@compute @workgroup_size(ROW_WG)
fn argmax_groups(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.n {
        return;
    }
    let base = row * p.cols;
    var bv = 0.0;
    var bi = NONE;
    // Each invocation scans its columns in increasing order, so strict > keeps the first.
    for (var c = lid; c < p.cols; c += ROW_WG) {
        let v = x[base + c];
        if bi == NONE || v > bv {
            bv = v;
            bi = c;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var s = ROW_WG / 2u; s > 0u; s >>= 1u) {
        if lid < s && beats(best_v[lid + s], best_i[lid + s], best_v[lid], best_i[lid]) {
            best_v[lid] = best_v[lid + s];
            best_i[lid] = best_i[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out[row] = f32(best_i[0]);
    }
}
