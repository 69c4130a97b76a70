// 2-D max and average pooling over NCHW planes, forward and backward, and the row means
// behind global average pooling. One output value per invocation over a flat index folded
// into a 2-D grid; the backward kernels gather over the windows that cover each input
// value, so no two invocations write one value and no atomics are needed.

struct Params {
    // Planes: batch * channels.
    planes: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    // 1 when average windows divide by kh * kw even where they cover padding.
    include_pad: u32,
}

// row_mean and spread: a [rows, cols] matrix.
struct RowParams {
    rows: u32,
    cols: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(0) var<uniform> rp: RowParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
// The argmax indices backward reads for max pooling (dy again for average pooling).
@group(0) @binding(2) var<storage, read> argmax: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
// max_forward's argmax output, or backward's dx.
@group(0) @binding(3) var<storage, read_write> dst3: array<f32>;

// Whether backward undoes max pooling (or average pooling).
override MAX: bool = false;

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// First and last output row (or column) whose window covers input coordinate i, as
// (first, last + 1); empty when first >= end.
fn covering(i: u32, pad: u32, k: u32, s: u32, outs: u32) -> vec2<u32> {
    let t = i32(i + pad) + 1 - i32(k);
    let first = select(0u, (u32(max(t, 0)) + s - 1u) / s, t > 0);
    let end = min(outs, (i + pad) / s + 1u);
    return vec2<u32>(first, end);
}

// Elements of the window at (oy, ox) that lie inside the plane, or kh * kw with padding.
fn divisor(oy: u32, ox: u32) -> f32 {
    if p.include_pad == 1u {
        return f32(p.kh * p.kw);
    }
    let y0 = i32(oy * p.sh) - i32(p.ph);
    let x0 = i32(ox * p.sw) - i32(p.pw);
    let rows = min(y0 + i32(p.kh), i32(p.h)) - max(y0, 0);
    let cols = min(x0 + i32(p.kw), i32(p.w)) - max(x0, 0);
    return f32(rows * cols);
}

// out[i] = the largest value of its window (the first one on ties), argmax[i] = its
// index iy * w + ix in the plane, as f32 (exact below 2^24, which pool.rs checks).
@compute @workgroup_size(256)
fn max_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    let oplane = p.oh * p.ow;
    if i >= p.planes * oplane {
        return;
    }
    let base = (i / oplane) * p.h * p.w;
    let y0 = i32(((i % oplane) / p.ow) * p.sh) - i32(p.ph);
    let x0 = i32((i % p.ow) * p.sw) - i32(p.pw);
    var best = 0.0;
    var at = 0u;
    var found = false;
    for (var ky = 0u; ky < p.kh; ky++) {
        let iy = y0 + i32(ky);
        if iy < 0 || iy >= i32(p.h) {
            continue;
        }
        for (var kx = 0u; kx < p.kw; kx++) {
            let ix = x0 + i32(kx);
            if ix < 0 || ix >= i32(p.w) {
                continue;
            }
            let pos = u32(iy) * p.w + u32(ix);
            let v = src[base + pos];
            if !found || v > best {
                best = v;
                at = pos;
                found = true;
            }
        }
    }
    dst[i] = best;
    dst3[i] = f32(at);
}

@compute @workgroup_size(256)
fn avg_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    let oplane = p.oh * p.ow;
    if i >= p.planes * oplane {
        return;
    }
    let base = (i / oplane) * p.h * p.w;
    let oy = (i % oplane) / p.ow;
    let ox = i % p.ow;
    let y0 = i32(oy * p.sh) - i32(p.ph);
    let x0 = i32(ox * p.sw) - i32(p.pw);
    var acc = 0.0;
    for (var ky = 0u; ky < p.kh; ky++) {
        let iy = y0 + i32(ky);
        if iy < 0 || iy >= i32(p.h) {
            continue;
        }
        for (var kx = 0u; kx < p.kw; kx++) {
            let ix = x0 + i32(kx);
            if ix >= 0 && ix < i32(p.w) {
                acc += src[base + u32(iy) * p.w + u32(ix)];
            }
        }
    }
    dst[i] = acc / divisor(oy, ox);
}

// dx[i] = the sum of dy over the windows that take value i: those whose argmax is i
// for max pooling, every window covering i (dy over its divisor) for average pooling.
@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    let plane = p.h * p.w;
    if i >= p.planes * plane {
        return;
    }
    let pos = i % plane;
    let obase = (i / plane) * p.oh * p.ow;
    let ys = covering(pos / p.w, p.ph, p.kh, p.sh, p.oh);
    let xs = covering(pos % p.w, p.pw, p.kw, p.sw, p.ow);
    var acc = 0.0;
    for (var oy = ys.x; oy < ys.y; oy++) {
        for (var ox = xs.x; ox < xs.y; ox++) {
            let o = obase + oy * p.ow + ox;
            if !MAX {
                acc += src[o] / divisor(oy, ox);
            } else if u32(argmax[o]) == pos {
                acc += src[o];
            }
        }
    }
    dst3[i] = acc;
}

// dst[r] = scale * the sum of row r: one row per invocation (see the note on lavapipe in
// src/ops/activation.rs: a workgroup reduction per row is slower there).
@compute @workgroup_size(256)
fn row_mean(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat(gid, nwg);
    if r >= rp.rows {
        return;
    }
    var acc = 0.0;
    for (var j = 0u; j < rp.cols; j++) {
        acc += src[r * rp.cols + j];
    }
    dst[r] = acc * rp.scale;
}

// dst[r, j] = scale * src[r]: the backward of row_mean.
@compute @workgroup_size(256)
fn spread(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if i >= rp.rows * rp.cols {
        return;
    }
    dst[i] = src[i / rp.cols] * rp.scale;
}
