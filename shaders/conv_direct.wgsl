// 2-D convolution over NCHW tensors, weights [OC, C, KH, KW]: direct kernels (implicit
// GEMM, the input taps read in place) that block registers as the vec4 matmul does.
//
// Each invocation computes 8 channels x 4 positions, so every step of its loop makes
// 4 scalar loads of the image (or dy), 2 vec4 loads of weights, and 32 FMAs into
// vec4 accumulators; no workgroup memory and no barriers, which lavapipe runs slowly.
// The forward pass and the input gradient read weights that src/ops/conv.rs has first
// packed so the 8 channels a step needs are adjacent and padded to a multiple of 8:
//   forward:        wp[q, oc]           q = (ic, ky, kx), oc padded to OCP
//   backward_input: wp[oc, ky, kx, ic]  ic padded to CP
// Every index is clamped, guarded, or in range for the shapes conv.rs checks, so the
// kernels run without naga's bounds checks. Needs conv_common.wgsl in front.

@group(0) @binding(2) var<storage, read> wp: array<vec4<f32>>;
// dy, for the weight gradient.
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
// dx, or the partial sums of dw.
@group(0) @binding(3) var<storage, read_write> out3: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

override BIAS: bool = false;

const LANES: u32 = 64u;

// Rows of 4 positions each workgroup takes: workgroups fold over x and y, z is the
// channel block.
fn first_row(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return ((wid.x + wid.y * nwg.x) * LANES + lid.x) * 4u;
}

fn round8(v: u32) -> u32 {
    return (v + 7u) / 8u * 8u;
}

fn acc_step(acc: ptr<function, array<vec4<f32>, 8>>, w0: vec4<f32>, w1: vec4<f32>, v: vec4<f32>) {
    (*acc)[0] += w0.x * v;
    (*acc)[1] += w0.y * v;
    (*acc)[2] += w0.z * v;
    (*acc)[3] += w0.w * v;
    (*acc)[4] += w1.x * v;
    (*acc)[5] += w1.y * v;
    (*acc)[6] += w1.z * v;
    (*acc)[7] += w1.w * v;
}

// y at 4 consecutive positions r = (img, oy, ox) of the [N * OH * OW] flattening, for
// channels 8 * wid.z .. + 8.
@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let oplane = p.oh * p.ow;
    let rows = p.n * oplane;
    let r0 = first_row(wid, nwg, lid);
    if r0 >= rows {
        return;
    }
    let plane = p.h * p.w;
    // Positions past the end repeat the last, so all 4 run the same loop.
    let r = min(vec4<u32>(r0, r0 + 1u, r0 + 2u, r0 + 3u), vec4<u32>(rows - 1u));
    let img = r / oplane;
    let pix = r % oplane;
    let base = img * p.c * plane;
    let y0 = vec4<i32>((pix / p.ow) * p.sh) - i32(p.ph);
    let x0 = vec4<i32>((pix % p.ow) * p.sw) - i32(p.pw);
    let ksz = p.kh * p.kw;
    let ocp4 = round8(p.oc) / 4u;
    let oc0 = wid.z * 8u;
    var acc: array<vec4<f32>, 8>;
    for (var ic = 0u; ic < p.c; ic++) {
        let cbase = base + ic * plane;
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = y0 + i32(ky * p.dh);
            let row_ok = (iy >= vec4<i32>(0)) & (iy < vec4<i32>(i32(p.h)));
            let row = cbase + vec4<u32>(max(iy, vec4<i32>(0))) * p.w;
            for (var kx = 0u; kx < p.kw; kx++) {
                let ix = x0 + i32(kx * p.dw);
                let ok = row_ok & (ix >= vec4<i32>(0)) & (ix < vec4<i32>(i32(p.w)));
                let at = select(vec4<u32>(0u), row + vec4<u32>(max(ix, vec4<i32>(0))), ok);
                let v = select(vec4<f32>(0.0), vec4<f32>(src[at.x], src[at.y], src[at.z], src[at.w]), ok);
                let q = (ic * ksz + ky * p.kw + kx) * ocp4 + oc0 / 4u;
                acc_step(&acc, wp[q], wp[q + 1u], v);
            }
        }
    }
    for (var j = 0u; j < 8u; j++) {
        let oc = oc0 + j;
        if oc >= p.oc {
            break;
        }
        var b = 0.0;
        if BIAS {
            b = bias[oc];
        }
        for (var t = 0u; t < 4u; t++) {
            if r0 + t < rows {
                y[(img[t] * p.oc + oc) * oplane + pix[t]] = acc[j][t] + b;
            }
        }
    }
}

// dx at 4 consecutive positions (img, iy, ix) of the [N * H * W] flattening, for input
// channels 8 * wid.z .. + 8: each gathers dy at every output position whose window covers it.
@compute @workgroup_size(64)
fn backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let plane = p.h * p.w;
    let rows = p.n * plane;
    let r0 = first_row(wid, nwg, lid);
    if r0 >= rows {
        return;
    }
    let oplane = p.oh * p.ow;
    let r = min(vec4<u32>(r0, r0 + 1u, r0 + 2u, r0 + 3u), vec4<u32>(rows - 1u));
    let img = r / plane;
    let pix = r % plane;
    let dbase = img * p.oc * oplane;
    let ty0 = vec4<i32>(pix / p.w + p.ph);
    let tx0 = vec4<i32>(pix % p.w + p.pw);
    let sh = vec4<i32>(i32(p.sh));
    let sw = vec4<i32>(i32(p.sw));
    let ksz = p.kh * p.kw;
    let cp4 = round8(p.c) / 4u;
    let ic0 = wid.z * 8u;
    var acc: array<vec4<f32>, 8>;
    for (var ky = 0u; ky < p.kh; ky++) {
        let ty = ty0 - i32(ky * p.dh);
        let oy = ty / sh;
        let row_ok = (ty >= vec4<i32>(0)) & (ty % sh == vec4<i32>(0)) & (oy < vec4<i32>(i32(p.oh)));
        if !any(row_ok) {
            continue;
        }
        for (var kx = 0u; kx < p.kw; kx++) {
            let tx = tx0 - i32(kx * p.dw);
            let ox = tx / sw;
            let ok = row_ok & (tx >= vec4<i32>(0)) & (tx % sw == vec4<i32>(0)) & (ox < vec4<i32>(i32(p.ow)));
            if !any(ok) {
                continue;
            }
            let at = select(vec4<u32>(0u), dbase + vec4<u32>(max(oy, vec4<i32>(0))) * p.ow + vec4<u32>(max(ox, vec4<i32>(0))), ok);
            let k = ky * p.kw + kx;
            for (var o = 0u; o < p.oc; o++) {
                let a = at + o * oplane;
                let g = select(vec4<f32>(0.0), vec4<f32>(src[a.x], src[a.y], src[a.z], src[a.w]), ok);
                let q = (o * ksz + k) * cp4 + ic0 / 4u;
                acc_step(&acc, wp[q], wp[q + 1u], g);
            }
        }
    }
    for (var j = 0u; j < 8u; j++) {
        let ic = ic0 + j;
        if ic >= p.c {
            break;
        }
        for (var t = 0u; t < 4u; t++) {
            if r0 + t < rows {
                out3[(img[t] * p.c + ic) * plane + pix[t]] = acc[j][t];
            }
        }
    }
}

// Partial dw over one chunk of `chunk` output rows (img, oy): out3[chunk, oc, q] for 8
// channels x 4 taps q = (ic, ky, kx) per invocation. The flat index runs over tap blocks,
// then channel blocks, then chunks.
@compute @workgroup_size(64)
fn backward_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * LANES;
    let ksz = p.kh * p.kw;
    let taps = p.c * ksz;
    let tbs = (taps + 3u) / 4u;
    let ocbs = (p.oc + 7u) / 8u;
    let orows = p.n * p.oh;
    let chunks = max(1u, (orows + p.chunk - 1u) / p.chunk);
    if t >= tbs * ocbs * chunks {
        return;
    }
    let q0 = (t % tbs) * 4u;
    let oc0 = ((t / tbs) % ocbs) * 8u;
    let k = t / (tbs * ocbs);
    let q = min(vec4<u32>(q0, q0 + 1u, q0 + 2u, q0 + 3u), vec4<u32>(taps - 1u));
    let plane = p.h * p.w;
    let qoff = (q / ksz) * plane;
    let kyd = vec4<i32>(((q % ksz) / p.kw) * p.dh) - i32(p.ph);
    let kxd = vec4<i32>((q % p.kw) * p.dw) - i32(p.pw);
    let oplane = p.oh * p.ow;
    let last = p.oc - 1u;
    let d0 = vec4<u32>(min(oc0, last), min(oc0 + 1u, last), min(oc0 + 2u, last), min(oc0 + 3u, last)) * oplane;
    let d1 = vec4<u32>(min(oc0 + 4u, last), min(oc0 + 5u, last), min(oc0 + 6u, last), min(oc0 + 7u, last)) * oplane;
    var acc: array<vec4<f32>, 8>;
    let end = min(orows, (k + 1u) * p.chunk);
    for (var rr = k * p.chunk; rr < end; rr++) {
        let img = rr / p.oh;
        let oy = rr % p.oh;
        let iy = i32(oy * p.sh) + kyd;
        let row_ok = (iy >= vec4<i32>(0)) & (iy < vec4<i32>(i32(p.h)));
        let row = img * p.c * plane + qoff + vec4<u32>(max(iy, vec4<i32>(0))) * p.w;
        let dbase = img * p.oc * oplane + oy * p.ow;
        for (var ox = 0u; ox < p.ow; ox++) {
            let ix = i32(ox * p.sw) + kxd;
            let ok = row_ok & (ix >= vec4<i32>(0)) & (ix < vec4<i32>(i32(p.w)));
            let at = select(vec4<u32>(0u), row + vec4<u32>(max(ix, vec4<i32>(0))), ok);
            let v = select(vec4<f32>(0.0), vec4<f32>(src[at.x], src[at.y], src[at.z], src[at.w]), ok);
            let a0 = d0 + dbase + ox;
            let a1 = d1 + dbase + ox;
            acc_step(&acc, vec4<f32>(dy[a0.x], dy[a0.y], dy[a0.z], dy[a0.w]), vec4<f32>(dy[a1.x], dy[a1.y], dy[a1.z], dy[a1.w]), v);
        }
    }
    for (var j = 0u; j < 8u; j++) {
        let oc = oc0 + j;
        if oc >= p.oc {
            break;
        }
        for (var e = 0u; e < 4u; e++) {
            if q0 + e < taps {
                out3[(k * p.oc + oc) * taps + q0 + e] = acc[j][e];
            }
        }
    }
}
