// Column blocks of a row-major [rows, whole] matrix: `scatter` writes a [rows, part]
// matrix into columns offset..offset + part, `gather` reads them back out. Concatenate's
// forward and backward (a [c, h, w] sample is contiguous, so channels concatenate alike).

struct Params {
    rows: u32,
    part: u32,
    whole: u32,
    offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn scatter(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 256u;
    if e >= p.rows * p.part {
        return;
    }
    let r = e / p.part;
    let c = e % p.part;
    out[r * p.whole + p.offset + c] = x[e];
}

@compute @workgroup_size(256)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 256u;
    if e >= p.rows * p.part {
        return;
    }
    let r = e / p.part;
    let c = e % p.part;
    out[e] = x[r * p.whole + p.offset + c];
}
