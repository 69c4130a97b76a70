// Optimizer updates (SGD, Adam, AdamW, RMSprop, Adagrad) and global-norm gradient
// clipping, in one module so that one parameterised kernel serves every rule.
//
// The discrete shape of a rule (which rule, which state buffers exist) comes from
// override constants, so dead branches compile away; every number (lr, weight decay,
// betas, bias corrections) comes from the uniform, so a changing step or schedule
// never compiles a new pipeline.
//
// All entry points share these declarations and each uses a prefix of them
// (kiln's binding convention: uniform, then read-only, then read-write):
//   x      update: the gradient    sumsq: a gradient    sum_partials: partials   clip: norm_sq
//   y      update: the parameter   sumsq: partials      sum_partials: norm_sq    clip: a gradient
//   s0..s2 update only: optimizer state, in the slot order of Rule::slots (optim.rs)

struct Params {
    n: u32,
    // 1 on the first step (t == 1): state is initialised here, whatever the buffers hold.
    first: u32,
    // sumsq: where this gradient's partial sums start in y.
    base: u32,
    // The learning rate (Adagrad: already decayed, clr).
    lr: f32,
    wd: f32,
    // SGD: momentum mu; Adam/AdamW: beta1; RMSprop: alpha.
    a: f32,
    // SGD: dampening tau; Adam/AdamW: beta2; RMSprop: momentum mu; Adagrad: initial accumulator.
    b: f32,
    eps: f32,
    // Adam/AdamW: 1 - beta1^t and sqrt(1 - beta2^t).
    bc1: f32,
    bc2_sqrt: f32,
    max_norm: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> s0: array<f32>;
@group(0) @binding(4) var<storage, read_write> s1: array<f32>;
@group(0) @binding(5) var<storage, read_write> s2: array<f32>;

// 0 SGD, 1 Adam, 2 AdamW, 3 RMSprop, 4 Adagrad
override RULE: u32 = 0u;
// SGD and RMSprop: a momentum buffer exists (SGD: s0, RMSprop: s1).
override MOMENTUM: u32 = 0u;
override NESTEROV: u32 = 0u;
// Adam: s2 holds the running maximum of v.
override AMSGRAD: u32 = 0u;
// RMSprop: s2 holds the running mean of the gradient.
override CENTERED: u32 = 0u;

var<workgroup> partial: array<f32, 256>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// The previous value of a state slot, or its initial value on the first step
// (select, not arithmetic, so that garbage or NaN in fresh buffers cannot leak in).
fn prev(old: f32, init: f32) -> f32 {
    return select(old, init, p.first != 0u);
}

@compute @workgroup_size(256)
fn update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.n {
        return;
    }
    var theta = y[i];
    var g = x[i];
    switch RULE {
        case 0u: {
            // SGD: g += wd*theta; b_1 = g, b_t = mu*b + (1 - tau)*g;
            // nesterov: g += mu*b, else g = b; theta -= lr*g
            g = g + p.wd * theta;
            if MOMENTUM != 0u {
                let buf = select(p.a * s0[i] + (1.0 - p.b) * g, g, p.first != 0u);
                s0[i] = buf;
                if NESTEROV != 0u {
                    g = g + p.a * buf;
                } else {
                    g = buf;
                }
            }
            y[i] = theta - p.lr * g;
        }
        case 1u, 2u: {
            // Adam: g += wd*theta.  AdamW: theta *= 1 - lr*wd.
            // m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; amsgrad: vmax = max(vmax, v), v <- vmax;
            // theta -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
            if RULE == 2u {
                theta = theta * (1.0 - p.lr * p.wd);
            } else {
                g = g + p.wd * theta;
            }
            let m = p.a * prev(s0[i], 0.0) + (1.0 - p.a) * g;
            var v = p.b * prev(s1[i], 0.0) + (1.0 - p.b) * g * g;
            s0[i] = m;
            s1[i] = v;
            if AMSGRAD != 0u {
                v = max(prev(s2[i], 0.0), v);
                s2[i] = v;
            }
            let denom = sqrt(v) / p.bc2_sqrt + p.eps;
            y[i] = theta - (p.lr / p.bc1) * m / denom;
        }
        case 3u: {
            // RMSprop: g += wd*theta; v = alpha*v + (1-alpha)*g^2;
            // centered: ga = alpha*ga + (1-alpha)*g, v~ = v - ga^2;
            // momentum: b = mu*b + g/(sqrt(v~)+eps), theta -= lr*b; else theta -= lr*g/(sqrt(v~)+eps)
            g = g + p.wd * theta;
            let v = p.a * prev(s0[i], 0.0) + (1.0 - p.a) * g * g;
            s0[i] = v;
            var vt = v;
            if CENTERED != 0u {
                let ga = p.a * prev(s2[i], 0.0) + (1.0 - p.a) * g;
                s2[i] = ga;
                vt = v - ga * ga;
            }
            let scaled = g / (sqrt(vt) + p.eps);
            if MOMENTUM != 0u {
                let buf = p.b * prev(s1[i], 0.0) + scaled;
                s1[i] = buf;
                y[i] = theta - p.lr * buf;
            } else {
                y[i] = theta - p.lr * scaled;
            }
        }
        default: {
            // Adagrad: g += wd*theta; sum += g^2 (sum_0 = initial accumulator);
            // theta -= clr * g / (sqrt(sum) + eps), clr = lr / (1 + (t-1)*lr_decay)
            g = g + p.wd * theta;
            let sum = prev(s0[i], p.b) + g * g;
            s0[i] = sum;
            y[i] = theta - p.lr * g / (sqrt(sum) + p.eps);
        }
    }
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
