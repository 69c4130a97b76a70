// The optimizer update (SGD, Adam, AdamW, RMSprop, Adagrad): one parameterised kernel
// for every rule, 4 elements per invocation.
//
// The discrete shape of a rule (which rule, which state buffers exist) comes from
// override constants, so dead branches compile away; every number (lr, weight decay,
// betas, bias corrections) comes from the uniform, so a changing step or schedule
// never compiles a new pipeline. vec4 loads matter on lavapipe, where each storage
// access costs a loop over the SIMD lanes whatever its width.

// struct Params: optim_params.wgsl, prepended by optim.rs.


@group(0) @binding(0) var<uniform> p: Params;
// x: the gradient, y: the parameter, s0..s2: optimizer state in the slot order of
// Rule::slots (optim.rs). Read as vec4: kiln's buffers hold a multiple of 4 floats.
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> s0: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> s1: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> s2: array<vec4<f32>>;

// 0 SGD, 1 Adam, 2 AdamW, 3 RMSprop, 4 Adagrad
override RULE: u32 = 0u;
// SGD and RMSprop: a momentum buffer exists (SGD: s0, RMSprop: s1).
override MOMENTUM: u32 = 0u;
override NESTEROV: u32 = 0u;
// Adam: s2 holds the running maximum of v.
override AMSGRAD: u32 = 0u;
// RMSprop: s2 holds the running mean of the gradient.
override CENTERED: u32 = 0u;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// The new parameter values where they lie before n; past it (a buffer's padding to a
// multiple of 4) the old ones stay.
fn in_range(i: u32, old: vec4<f32>, updated: vec4<f32>) -> vec4<f32> {
    return select(old, updated, vec4<u32>(i * 4u) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.n));
}

// The previous value of a state slot, or its initial value on the first step
// (select, not arithmetic, so that garbage or NaN in fresh buffers cannot leak in).
fn prev(old: vec4<f32>, init: f32) -> vec4<f32> {
    return select(old, vec4<f32>(init), p.first != 0u);
}

@compute @workgroup_size(256)
fn update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i * 4u >= p.n {
        return;
    }
    let old = y[i];
    var theta = old;
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
            y[i] = in_range(i, old, theta - p.lr * g);
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
            y[i] = in_range(i, old, theta - (p.lr / p.bc1) * m / denom);
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
                y[i] = in_range(i, old, theta - p.lr * buf);
            } else {
                y[i] = in_range(i, old, theta - p.lr * scaled);
            }
        }
        default: {
            // Adagrad: g += wd*theta; sum += g^2 (sum_0 = initial accumulator);
            // theta -= clr * g / (sqrt(sum) + eps), clr = lr / (1 + (t-1)*lr_decay)
            g = g + p.wd * theta;
            let sum = prev(s0[i], p.b) + g * g;
            s0[i] = sum;
            y[i] = in_range(i, old, theta - p.lr * g / (sqrt(sum) + p.eps));
        }
    }
}

