// Elementwise arithmetic over flat f32 arrays.
// Index: x + y * num_workgroups.x spreads large arrays over a 2-D grid.

struct Params {
    n: u32,
    alpha: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// 0: a + b, 1: a - b, 2: a * b
override OP: u32 = 0u;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.n {
        return;
    }
    switch OP {
        case 0u: { out[i] = a[i] + b[i]; }
        case 1u: { out[i] = a[i] - b[i]; }
        default: { out[i] = a[i] * b[i]; }
    }
}
