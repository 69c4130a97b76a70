// Metrics accumulated on the GPU across batches: a confusion matrix of f32 counts and
// the sums of |e| and e^2.
//
// Variables that share a binding number belong to different entry points: WGSL and
// naga only require bindings to be unique within one entry point.

struct Params {
    // Rows (confusion) or elements (abs_sq), or partial pairs (abs_sq_finish).
    n: u32,
    // Classes: columns of the scores and the side of the confusion matrix.
    classes: u32,
    // Binary confusion: a score above it predicts class 1.
    threshold: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pred: array<f32>;
@group(0) @binding(2) var<storage, read> tgt: array<f32>;
// The f32 confusion counts, updated through their bits (WGSL has no f32 atomics).
@group(0) @binding(3) var<storage, read_write> counts: array<atomic<u32>>;
// abs_sq: (sum |e|, sum e^2) per workgroup, or the running sums for a single workgroup.
@group(0) @binding(3) var<storage, read_write> sums: array<f32>;

// abs_sq_finish: the partial pairs in, the running sums updated.
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> total: array<f32>;

// Binary confusion: one score column compared with the threshold instead of an argmax.
override BINARY: bool = false;

const WG: u32 = 256u;
// Cells of the workgroup-local histogram (8 KiB, within every adapter's limit);
// confusion_local takes matrices up to 45 x 45.
const LOCAL_CELLS: u32 = 2048u;

// Stacked trials (the confusion kernels, trial t = workgroup_id.z): trial t's scores
// start at t * n * classes and its matrix at t * classes^2; the labels are shared.
var<private> trial_scores: u32;
var<private> trial_cells: u32;

var<workgroup> hist: array<atomic<u32>, LOCAL_CELLS>;
var<workgroup> red: array<vec2<f32>, 256>;

// The confusion cell of row r (true * classes + predicted), or none for a bad label.
fn cell(r: u32) -> u32 {
    let y = tgt[r];
    let ok = y >= 0.0 && y < f32(p.classes) && floor(y) == y;
    if !ok {
        return 0xffffffffu;
    }
    var k = 0u;
    if BINARY {
        k = select(0u, 1u, pred[trial_scores + r] > p.threshold);
    } else {
        // Argmax; a strict comparison keeps the first of equal maxima.
        let base = trial_scores + r * p.classes;
        var best = pred[base];
        for (var j = 1u; j < p.classes; j++) {
            let v = pred[base + j];
            if v > best {
                best = v;
                k = j;
            }
        }
    }
    return u32(y) * p.classes + k;
}

// counts[c] += v on the f32 bits, retrying when another invocation got there first.
fn add_count(cell_index: u32, v: f32) {
    let c = trial_cells + cell_index;
    var old = atomicLoad(&counts[c]);
    loop {
        let r = atomicCompareExchangeWeak(&counts[c], old, bitcast<u32>(bitcast<f32>(old) + v));
        if r.exchanged {
            break;
        }
        old = r.old_value;
    }
}

// Small matrices: count in workgroup memory, then one global update per non-empty
// cell and workgroup, so the hot diagonal cells see few global retries.
@compute @workgroup_size(256)
fn confusion_local(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let cells = p.classes * p.classes;
    trial_scores = wid.z * p.n * p.classes;
    trial_cells = wid.z * cells;
    for (var c = lid; c < cells; c += WG) {
        atomicStore(&hist[c], 0u);
    }
    workgroupBarrier();
    for (var r = gid.x; r < p.n; r += nwg.x * WG) {
        let c = cell(r);
        if c < cells {
            atomicAdd(&hist[c], 1u);
        }
    }
    workgroupBarrier();
    for (var c = lid; c < cells; c += WG) {
        let h = atomicLoad(&hist[c]);
        if h != 0u {
            add_count(c, f32(h));
        }
    }
}

// Large matrices: every row updates its cell in global memory.
@compute @workgroup_size(256)
fn confusion_global(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let cells = p.classes * p.classes;
    trial_scores = wid.z * p.n * p.classes;
    trial_cells = wid.z * cells;
    for (var r = gid.x; r < p.n; r += nwg.x * WG) {
        let c = cell(r);
        if c < cells {
            add_count(c, 1.0);
        }
    }
}

fn workgroup_sum(acc: vec2<f32>, lid: u32) -> vec2<f32> {
    red[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    return red[0];
}

@compute @workgroup_size(256)
fn abs_sq(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    var acc = vec2(0.0);
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        let e = pred[i] - tgt[i];
        acc += vec2(abs(e), e * e);
    }
    let s = workgroup_sum(acc, lid);
    if lid == 0u {
        if nwg.x == 1u {
            // The only workgroup: accumulate straight into the running sums.
            sums[0] += s.x;
            sums[1] += s.y;
        } else {
            sums[2u * wid.x] = s.x;
            sums[2u * wid.x + 1u] = s.y;
        }
    }
}

// One workgroup: total += the sum of the n partial pairs.
@compute @workgroup_size(256)
fn abs_sq_finish(@builtin(local_invocation_index) lid: u32) {
    var acc = vec2(0.0);
    for (var i = lid; i < p.n; i += WG) {
        acc += vec2(partials[2u * i], partials[2u * i + 1u]);
    }
    let s = workgroup_sum(acc, lid);
    if lid == 0u {
        total[0] += s.x;
        total[1] += s.y;
    }
}
