// A classifier's output layer, forward and backward, in one workgroup:
//   z = h W^T + b                          (the logits, [rows, cols])
//   loss = mean over rows of softmax cross-entropy(z, targets)   -> loss_log[slot]
//   dz = d loss / dz                       ([rows, cols])
//   dW = dz^T h, db = column sums of dz    (the output layer's gradients)
//   dh = (dz W) * f'(h)                    (through the hidden layer's activation, from its output)
//   dh^T and the hidden bias gradient (column sums of dh), for the hidden layer's backward.
// On lavapipe each dispatch costs about 50 us of GPU time and about 10 us of host time
// before any arithmetic, and these products are small (cols <= 32), so five dispatches
// (forward matmul, loss, epilogue gradient, two backward matmuls) become one. Needs
// act.wgsl in front.

struct Params {
    rows: u32,
    hid: u32,
    // The hidden activation's parameter (leaky ReLU's slope).
    alpha: f32,
    // 1 / rows: the mean's factor, also in the gradient.
    scale: f32,
    // A quiet NaN's bits, for a row whose label is not a class id.
    nan: u32,
    slot: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// h, W and their gradients move 4 hidden units per access (hid is a multiple of 4): on
// lavapipe every storage access whose address differs per lane is a loop over the lanes.
@group(0) @binding(1) var<storage, read> h: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> tgt: array<f32>;
@group(0) @binding(5) var<storage, read_write> logits: array<f32>;
@group(0) @binding(6) var<storage, read_write> dz: array<f32>;
@group(0) @binding(7) var<storage, read_write> dw: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> db: array<f32>;
@group(0) @binding(9) var<storage, read_write> dh: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> dht: array<f32>;
@group(0) @binding(11) var<storage, read_write> dhb: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> loss_log: array<f32>;

// 4: categorical cross-entropy (one-hot or soft targets), 5: sparse (class ids), as loss.wgsl.
override LOSS: u32 = 5u;
// Whether the output layer has a bias (b read, db written); otherwise both are aliases.
override BIAS: bool = true;
// Whether to write dh^T and the hidden bias gradient.
override HT: bool = true;
override HBIAS: bool = true;

const WG: u32 = 256u;
const MAXC: u32 = 32u;
// The class count, a constant so that the loops over classes unroll and the per-class
// arrays live in registers (dynamic indexing turns them into memory on lavapipe).
override COLS: u32 = 10u;
// The hidden layer's activation (act.wgsl's codes): a constant, not a parameter, for the
// same reason as the loop bounds below.
override ACT: u32 = 0u;

// Loop bounds. lavapipe (Mesa 22) "inlines" uniform values that bound a loop or decide a
// branch: at every dispatch it substitutes them, unrolls, and compiles the shader again
// unless that changed little, and a 32-row batch unrolls enough to keep it doing so (5 ms
// per dispatch instead of 0.2). Bounds clamped to the lengths of the bound buffers are not
// uniform values, so it leaves them alone; the clamps also keep a bad parameter block
// from indexing past the buffers.
fn row_count() -> u32 {
    return min(p.rows, arrayLength(&tgt));
}

fn vec_count() -> u32 {
    return min(p.hid / 4u, arrayLength(&w));
}

var<workgroup> red: array<f32, 256>;

// Row r: its logits, its loss (returned) and its gradient (dz, already scaled).
fn head_row(r: u32, h4: u32) -> f32 {
    var z: array<f32, MAXC>;
    for (var c = 0u; c < COLS; c++) {
        z[c] = select(0.0, b[c], BIAS);
    }
    // k outside: each h value is loaded once, W's are the same for every invocation.
    let hb = r * h4;
    for (var k = 0u; k < h4; k++) {
        let x = h[hb + k];
        for (var c = 0u; c < COLS; c++) {
            z[c] += dot(x, w[c * h4 + k]);
        }
    }
    var m = z[0];
    for (var c = 1u; c < COLS; c++) {
        m = max(m, z[c]);
    }
    var s = 0.0;
    var tsum = 0.0;
    // Sum of t * (m - z): non-negative terms, so no cancellation for large logits.
    var a = 0.0;
    let base = r * COLS;
    for (var c = 0u; c < COLS; c++) {
        s += exp(z[c] - m);
        if LOSS == 4u {
            let t = tgt[base + c];
            tsum += t;
            a += t * (m - z[c]);
        }
    }
    let ls = log(s);
    let lse = m + ls;
    var loss = a + tsum * ls;
    var label = COLS;
    var ok = true;
    if LOSS == 5u {
        let y = tgt[r];
        ok = y >= 0.0 && y < f32(COLS) && floor(y) == y;
        tsum = 1.0;
        if ok {
            label = u32(y);
            // A loop, not z[label]: an index that differs per lane would put z in memory.
            var zl = 0.0;
            for (var c = 0u; c < COLS; c++) {
                zl = select(zl, z[c], c == label);
            }
            loss = (m - zl) + ls;
        } else {
            loss = bitcast<f32>(p.nan);
        }
    }
    for (var c = 0u; c < COLS; c++) {
        var t = select(0.0, 1.0, c == label);
        if LOSS == 4u {
            t = tgt[base + c];
        }
        logits[base + c] = z[c];
        let g = (exp(z[c] - lse) * tsum - t) * p.scale;
        dz[base + c] = select(bitcast<f32>(p.nan), g, ok);
    }
    return loss;
}

// Hidden units 4k..4k+3: their columns of dW, dh and dh^T, and their bias gradients.
fn hidden_units(k: u32, rows: u32, h4: u32) {
    var wk: array<vec4<f32>, MAXC>;
    var gw: array<vec4<f32>, MAXC>;
    for (var c = 0u; c < COLS; c++) {
        wk[c] = w[c * h4 + k];
        gw[c] = vec4(0.0);
    }
    var sum = vec4(0.0);
    for (var r = 0u; r < rows; r++) {
        let x = h[r * h4 + k];
        let base = r * COLS;
        var g = vec4(0.0);
        for (var c = 0u; c < COLS; c++) {
            let d = dz[base + c];
            g += d * wk[c];
            gw[c] += x * d;
        }
        let v = g * vec4(
            act_derivative_from_output(ACT, p.alpha, x.x),
            act_derivative_from_output(ACT, p.alpha, x.y),
            act_derivative_from_output(ACT, p.alpha, x.z),
            act_derivative_from_output(ACT, p.alpha, x.w),
        );
        dh[r * h4 + k] = v;
        if HT {
            let t = 4u * k * rows + r;
            dht[t] = v.x;
            dht[t + rows] = v.y;
            dht[t + 2u * rows] = v.z;
            dht[t + 3u * rows] = v.w;
        }
        sum += v;
    }
    for (var c = 0u; c < COLS; c++) {
        dw[c * h4 + k] = gw[c];
    }
    if HBIAS {
        dhb[k] = sum;
    }
}

@compute @workgroup_size(256)
fn dense_head(@builtin(local_invocation_index) lid: u32) {
    let rows = row_count();
    let h4 = vec_count();
    var acc = 0.0;
    for (var r = lid; r < rows; r += WG) {
        acc += head_row(r, h4);
    }
    red[lid] = acc;
    // dz must be visible to every invocation before the hidden units read it.
    storageBarrier();
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        loss_log[p.slot] = red[0] * p.scale;
    }
    for (var k = lid; k < h4; k += WG) {
        hidden_units(k, rows, h4);
    }
    if BIAS {
        for (var c = lid; c < COLS; c += WG) {
            var sum = 0.0;
            for (var r = 0u; r < rows; r++) {
                sum += dz[r * COLS + c];
            }
            db[c] = sum;
        }
    }
}
