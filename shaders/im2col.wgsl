// Layout kernels that turn a convolution into matrix products (src/ops/conv.rs, im2col path):
//   im2col - cols[(img, oy, ox), (ic, ky, kx)] = the input tap, 0 in the padding;
//   col2im - dx[img, ic, iy, ix] = sum of dcols over the (output pixel, tap) pairs that read it;
//   swap   - out[b, j, i] = in[b, i, j]: NCHW <-> [N * pixels, channels], and the weight
//            packing of conv_direct.wgsl, where i runs on to a padded length with zeros.
// One output value per invocation, over a flat index folded into a 2-D grid. Needs
// conv_common.wgsl in front.

// swap's parameters: a batch of [rows, cols] matrices, written as [cols, padded].
struct SwapParams {
    batch: u32,
    rows: u32,
    cols: u32,
    padded: u32,
}

@group(0) @binding(0) var<uniform> sp: SwapParams;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    let ksz = p.kh * p.kw;
    let taps = p.c * ksz;
    let oplane = p.oh * p.ow;
    if i >= p.n * oplane * taps {
        return;
    }
    let q = i % taps;
    let r = i / taps;
    let img = r / oplane;
    let pix = r % oplane;
    let iy = i32((pix / p.ow) * p.sh + ((q % ksz) / p.kw) * p.dh) - i32(p.ph);
    let ix = i32((pix % p.ow) * p.sw + (q % p.kw) * p.dw) - i32(p.pw);
    dst[i] = tap((img * p.c + q / ksz) * p.h * p.w, iy, ix);
}

@compute @workgroup_size(256)
fn col2im(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    let plane = p.h * p.w;
    if i >= p.n * p.c * plane {
        return;
    }
    let pix = i % plane;
    let ic = (i / plane) % p.c;
    let img = i / (plane * p.c);
    let ksz = p.kh * p.kw;
    let taps = p.c * ksz;
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
            let row = (img * p.oh + u32(oy)) * p.ow + u32(ox);
            acc += src[row * taps + ic * ksz + ky * p.kw + kx];
        }
    }
    dst[i] = acc;
}

@compute @workgroup_size(256)
fn swap(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    let rows = sp.rows;
    let cols = sp.cols;
    if i >= sp.batch * sp.padded * cols {
        return;
    }
    // i indexes the output [b, j, r].
    let r = i % sp.padded;
    let j = (i / sp.padded) % cols;
    let b = i / (sp.padded * cols);
    if r >= rows {
        dst[i] = 0.0;
        return;
    }
    dst[i] = src[(b * rows + r) * cols + j];
}
