// Shared by batch_norm.wgsl and layer_norm.wgsl, which declare the input r1 and which
// src/ops puts this file in front of.

// (mean, sum of squared deviations) of r1[base .. base + len], in two passes: the
// deviations are taken from the mean, so a large mean does not cancel the variance away.
fn moments(base: u32, len: u32) -> vec2<f32> {
    var s = 0.0;
    for (var j = 0u; j < len; j++) {
        s += r1[base + j];
    }
    let mean = s / f32(len);
    var m2 = 0.0;
    for (var j = 0u; j < len; j++) {
        let d = r1[base + j] - mean;
        m2 += d * d;
    }
    return vec2<f32>(mean, m2);
}
