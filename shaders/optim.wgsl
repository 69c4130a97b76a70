// Global-norm gradient clipping; the update itself is in optim_update.wgsl. The
// uniform is the update's (so one parameter block serves both).
//
// The bindings (kiln's convention: uniform, then read-only, then read-write):
//   x   sumsq: a gradient    sum_partials: partials   clip: norm_sq
//   y   sumsq: partials      sum_partials: norm_sq    clip: a gradient

// struct Params: optim_params.wgsl, prepended by optim.rs.


@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, 256>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// Tree sum of `partial` over the workgroup; every invocation must call it.
fn workgroup_sum(lid: u32, value: f32) -> f32 {
    partial[lid] = value;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if lid < s {
            partial[lid] = partial[lid] + partial[lid + s];
        }
        workgroupBarrier();
    }
    return partial[0];
}

// y[base + workgroup] = sum of x[i]^2 over the workgroup's strided share of x[..n].
@compute @workgroup_size(256)
fn sumsq(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    var acc = 0.0;
    for (var i = wg.x * 256u + lid; i < p.n; i = i + nwg.x * 256u) {
        let v = x[i];
        acc = acc + v * v;
    }
    let total = workgroup_sum(lid, acc);
    if lid == 0u {
        y[p.base + wg.x] = total;
    }
}

// y[0] = sum of x[..n]; one workgroup, a fixed order, so the norm is deterministic.
@compute @workgroup_size(256)
fn sum_partials(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < p.n; i = i + 256u) {
        acc = acc + x[i];
    }
    let total = workgroup_sum(lid, acc);
    if lid == 0u {
        y[0] = total;
    }
}

// y *= min(1, max_norm / (sqrt(norm_sq) + 1e-6)), norm_sq read here so the host never waits.
@compute @workgroup_size(256)
fn clip(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.n {
        return;
    }
    let scale = min(1.0, p.max_norm / (sqrt(x[0]) + 1e-6));
    y[i] = y[i] * scale;
}
