// Shared by the convolution shaders (conv.wgsl, conv_direct.wgsl, im2col.wgsl), which
// src/ops/conv.rs prepends it to: the parameter block, the input, and index arithmetic.

struct Params {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    oc: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    dh: u32,
    dw: u32,
    // Output rows (image, oy) per chunk of the direct weight gradient's reduction.
    chunk: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// x, or dy for the input gradient.
@group(0) @binding(1) var<storage, read> src: array<f32>;

// x[img, ic, iy, ix], or 0 in the padding; `base` is the offset of plane (img, ic).
fn tap(base: u32, iy: i32, ix: i32) -> f32 {
    let ok = iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w);
    let i = select(0u, base + u32(iy) * p.w + u32(ix), ok);
    return select(0.0, src[i], ok);
}

// Along one axis: the output coordinate whose kernel tap k reads input coordinate i,
// or -1 when no output does (i falls between strides or past the edge).
fn out_coord(i: u32, k: u32, pad: u32, dil: u32, stride: u32, outs: u32) -> i32 {
    let t = i32(i + pad) - i32(k * dil);
    if t < 0 || u32(t) % stride != 0u || u32(t) / stride >= outs {
        return -1;
    }
    return t / i32(stride);
}
