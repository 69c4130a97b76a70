// Inverted dropout: out = x * mask / (1 - rate), the mask drawn from a counter-based hash
// of (seed, element index), so the backward pass recomputes the same mask instead of
// storing it, and the CPU backend reproduces it bit for bit.

struct Params {
    n: u32,
    seed: u32,
    rate: f32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// An integer mixer: xor-shifts and odd multipliers spread every input bit over the output.
fn mix(v: u32) -> u32 {
    var h = v;
    h ^= h >> 16u;
    h *= 0x21f0aaadu;
    h ^= h >> 15u;
    h *= 0x735a2d97u;
    h ^= h >> 15u;
    return h;
}

@compute @workgroup_size(256)
fn dropout(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.n {
        return;
    }
    // Top 24 bits as a uniform number in [0, 1).
    let u = f32(mix(i ^ mix(p.seed)) >> 8u) * (1.0 / 16777216.0);
    out[i] = select(0.0, x[i] * p.scale, u >= p.rate);
}
