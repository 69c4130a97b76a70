// 2-D convolution over NCHW tensors with weights [OC, C, KH, KW], one output value per
// invocation over a flat index: the benchmark's baseline (ConvKernel::Naive in
// src/ops/conv.rs, which puts conv_common.wgsl in front). The fast kernels are in
// conv_direct.wgsl. Every index is clamped, guarded, or in range for the shapes conv.rs
// checks, so the kernels run without naga's bounds checks.

// The weights, or dy for the weight gradient.
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
// Output of the two-input kernels (dx, dw or its partial sums).
@group(0) @binding(3) var<storage, read_write> out3: array<f32>;
// Output of the forward kernels (y).
@group(0) @binding(4) var<storage, read_write> out4: array<f32>;

override BIAS: bool = false;

const LANES: u32 = 64u;

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * LANES;
}

// y[i], one output value per invocation.
@compute @workgroup_size(64)
fn forward_naive(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    let plane = p.oh * p.ow;
    if i >= p.n * p.oc * plane {
        return;
    }
    let pix = i % plane;
    let oc = (i / plane) % p.oc;
    let img = i / (plane * p.oc);
    let y0 = i32((pix / p.ow) * p.sh) - i32(p.ph);
    let x0 = i32((pix % p.ow) * p.sw) - i32(p.pw);
    let ksz = p.kh * p.kw;
    var acc = 0.0;
    for (var ic = 0u; ic < p.c; ic++) {
        let base = (img * p.c + ic) * p.h * p.w;
        for (var ky = 0u; ky < p.kh; ky++) {
            for (var kx = 0u; kx < p.kw; kx++) {
                let v = tap(base, y0 + i32(ky * p.dh), x0 + i32(kx * p.dw));
                acc += v * wt[(oc * p.c + ic) * ksz + ky * p.kw + kx];
            }
        }
    }
    if BIAS {
        acc += bias[oc];
    }
    out4[i] = acc;
}

// dx[i], one input value per invocation.
@compute @workgroup_size(64)
fn backward_input_naive(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    let plane = p.h * p.w;
    if i >= p.n * p.c * plane {
        return;
    }
    let pix = i % plane;
    let ic = (i / plane) % p.c;
    let img = i / (plane * p.c);
    let oplane = p.oh * p.ow;
    let ksz = p.kh * p.kw;
    var acc = 0.0;
    for (var ky = 0u; ky < p.kh; ky++) {
        let oy = out_coord(pix / p.w, ky, p.ph, p.dh, p.sh, p.oh);
        if oy < 0 {
            continue;
        }
        for (var kx = 0u; kx < p.kw; kx++) {
            let ox = out_coord(pix % p.w, kx, p.pw, p.dw, p.sw, p.ow);
            if ox < 0 {
                continue;
            }
            let opix = u32(oy) * p.ow + u32(ox);
            for (var o = 0u; o < p.oc; o++) {
                let g = src[(img * p.oc + o) * oplane + opix];
                acc += g * wt[(o * p.c + ic) * ksz + ky * p.kw + kx];
            }
        }
    }
    out3[i] = acc;
}

// dw[i], one weight per invocation, over every image and output pixel.
@compute @workgroup_size(64)
fn backward_weight_naive(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    let ksz = p.kh * p.kw;
    let taps = p.c * ksz;
    if i >= p.oc * taps {
        return;
    }
    let q = i % taps;
    let oc = i / taps;
    let ic = q / ksz;
    let ky = (q % ksz) / p.kw;
    let kx = q % p.kw;
    let oplane = p.oh * p.ow;
    var acc = 0.0;
    for (var img = 0u; img < p.n; img++) {
        let base = (img * p.c + ic) * p.h * p.w;
        let dbase = (img * p.oc + oc) * oplane;
        for (var oy = 0u; oy < p.oh; oy++) {
            let iy = i32(oy * p.sh + ky * p.dh) - i32(p.ph);
            for (var ox = 0u; ox < p.ow; ox++) {
                let v = tap(base, iy, i32(ox * p.sw + kx * p.dw) - i32(p.pw));
                acc += v * wt[dbase + oy * p.ow + ox];
            }
        }
    }
    out3[i] = acc;
}
