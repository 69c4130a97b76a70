// Losses: the mean over the batch and its gradient with respect to the predictions.
//
// Every workgroup reduces its share of the items (elements for MSE, MAE and BCE, rows
// for the categorical losses) into part[workgroup]. A launch of one workgroup binds the
// value tensor as `part` and writes the mean directly (at value[slot]), so small batches take a single
// dispatch; larger ones add `finish`, which sums the partials.
//
// Variables that share a binding number belong to different entry points: WGSL and
// naga only require bindings to be unique within one entry point.

struct Params {
    // Items: elements (elementwise losses) or rows (categorical losses).
    n: u32,
    // Classes per row, for the categorical losses.
    cols: u32,
    // 1 / items, as f32 bits: turns the sum into the mean and scales the gradient.
    scale: f32,
    // A quiet NaN's bits: WGSL has no NaN constant and may fold arithmetic that makes one.
    nan: u32,
    // Where the mean goes in the value tensor: a training loop keeps one per step there.
    slot: u32,
    // Stacked trials (the rows kernels, one workgroup per trial t = workgroup_id.z): trial
    // t's predictions and gradient start at t * n * cols, its mean goes to
    // value[slot + t * stride]; the targets are shared.
    stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pred: array<f32>;
@group(0) @binding(2) var<storage, read> tgt: array<f32>;
@group(0) @binding(3) var<storage, read_write> part: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;

// finish: the partial sums in, the mean out.
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> value: array<f32>;

// 0 MSE, 1 MAE, 2 BCE from logits, 3 BCE from probabilities,
// 4 categorical cross-entropy (one-hot or soft targets), 5 sparse categorical (class ids).
override LOSS: u32 = 0u;

const WG: u32 = 256u;
// Keras' epsilon: probabilities are clamped to [EPS, 1 - EPS] before the log.
const EPS: f32 = 1e-7;

var<workgroup> red: array<f32, 256>;

fn sigmoid_f(x: f32) -> f32 {
    // Branch on the sign so exp never overflows.
    if x >= 0.0 {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

// (loss, d loss / d x) of one element of the elementwise losses.
fn elem(x: f32, t: f32) -> vec2<f32> {
    switch LOSS {
        case 0u: {
            let e = x - t;
            return vec2(e * e, 2.0 * e);
        }
        case 1u: {
            let e = x - t;
            return vec2(abs(e), sign(e));
        }
        case 2u: {
            // Stable for any x: exp only sees -|x|.
            let l = max(x, 0.0) - x * t + log(1.0 + exp(-abs(x)));
            return vec2(l, sigmoid_f(x) - t);
        }
        default: {
            // 1 - p from p itself (exact for p >= 0.5): 1 - clamp(p) would round the
            // upper bound to 1 - 1.19e-7 in f32 and make the two sides asymmetric.
            let q = clamp(x, EPS, 1.0 - EPS);
            let q1 = clamp(1.0 - x, EPS, 1.0 - EPS);
            let l = -(t * log(q) + (1.0 - t) * log(q1));
            // The clamp passes no gradient outside its range, as in Keras.
            let inside = x >= EPS && x <= 1.0 - EPS;
            return vec2(l, select(0.0, (1.0 - t) / q1 - t / q, inside));
        }
    }
}

// Sums `acc` over the workgroup; the result is valid in invocation 0.
fn workgroup_sum(acc: f32, lid: u32) -> f32 {
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

// Writes the workgroup's sum: the mean itself when it is the only workgroup.
fn store(acc: f32, lid: u32, group: u32, groups: u32, trial: u32) {
    let total = workgroup_sum(acc, lid);
    if lid == 0u {
        if groups == 1u {
            part[p.slot + trial * p.stride] = total * p.scale;
        } else {
            part[group] = total;
        }
    }
}

@compute @workgroup_size(256)
fn elem_grad(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    var acc = 0.0;
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        let r = elem(pred[i], tgt[i]);
        grad[i] = r.y * p.scale;
        acc += r.x;
    }
    store(acc, lid, wid.x, nwg.x, 0u);
}

@compute @workgroup_size(256)
fn elem_value(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    var acc = 0.0;
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        acc += elem(pred[i], tgt[i]).x;
    }
    store(acc, lid, wid.x, nwg.x, 0u);
}

struct Row {
    // log-sum-exp of the row's logits.
    lse: f32,
    // The row's cross-entropy.
    loss: f32,
    // Sum of the targets (1 for one-hot rows), the softmax's factor in the gradient.
    tsum: f32,
    // The class id (sparse), or the row length when there is none.
    label: u32,
    // False for a sparse label outside [0, cols) or not an integer.
    ok: bool,
}

// Row r of the predictions starting at `first` (a stacked trial's); targets are shared.
fn row_stats(first: u32, r: u32) -> Row {
    let tbase = r * p.cols;
    let base = first + tbase;
    var m = pred[base];
    for (var j = 1u; j < p.cols; j++) {
        m = max(m, pred[base + j]);
    }
    var s = 0.0;
    var tsum = 0.0;
    // Sum of t * (m - x): every term is non-negative, so no cancellation when the
    // logits are large (tsum * lse - sum t * x would lose the small difference).
    var a = 0.0;
    for (var j = 0u; j < p.cols; j++) {
        let x = pred[base + j];
        s += exp(x - m);
        if LOSS == 4u {
            let t = tgt[tbase + j];
            tsum += t;
            a += t * (m - x);
        }
    }
    let ls = log(s);
    if LOSS == 4u {
        return Row(m + ls, a + tsum * ls, tsum, p.cols, true);
    }
    let y = tgt[r];
    let ok = y >= 0.0 && y < f32(p.cols) && floor(y) == y;
    if !ok {
        // A bad label reads nothing out of bounds and poisons the loss instead.
        return Row(m + ls, bitcast<f32>(p.nan), 1.0, p.cols, false);
    }
    let label = u32(y);
    return Row(m + ls, (m - pred[base + label]) + ls, 1.0, label, true);
}

@compute @workgroup_size(256)
fn rows_grad(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let first = wid.z * p.n * p.cols;
    var acc = 0.0;
    for (var r = gid.x; r < p.n; r += nwg.x * WG) {
        let row = row_stats(first, r);
        acc += row.loss;
        let base = first + r * p.cols;
        for (var j = 0u; j < p.cols; j++) {
            var t = select(0.0, 1.0, j == row.label);
            if LOSS == 4u {
                t = tgt[r * p.cols + j];
            }
            let g = (exp(pred[base + j] - row.lse) * row.tsum - t) * p.scale;
            grad[base + j] = select(bitcast<f32>(p.nan), g, row.ok);
        }
    }
    store(acc, lid, wid.x, nwg.x, wid.z);
}

@compute @workgroup_size(256)
fn rows_value(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let first = wid.z * p.n * p.cols;
    var acc = 0.0;
    for (var r = gid.x; r < p.n; r += nwg.x * WG) {
        acc += row_stats(first, r).loss;
    }
    store(acc, lid, wid.x, nwg.x, wid.z);
}

// One workgroup: value[slot] = scale * sum of the n partials.
@compute @workgroup_size(256)
fn finish(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        acc += partials[i];
    }
    let total = workgroup_sum(acc, lid);
    if lid == 0u {
        value[p.slot] = total * p.scale;
    }
}
