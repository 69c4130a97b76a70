// The optimizer update (SGD, Adam, AdamW, RMSprop, Adagrad): one parameterised rule,
// `apply`, 4 elements per invocation, for one parameter tensor (`update`) or up to four
// at once (`update4`, one dispatch for a small model's every parameter).
//
// The discrete shape of a rule (which rule, which state buffers exist) comes from
// override constants, so dead branches compile away; every number (lr, weight decay,
// betas, bias corrections) comes from the uniform, so a changing step or schedule
// never compiles a new pipeline. vec4 loads matter on lavapipe, where each storage
// access costs a loop over the SIMD lanes whatever its width.

// struct Params: optim_params.wgsl, prepended by optim.rs.

// 0 SGD, 1 Adam, 2 AdamW, 3 RMSprop, 4 Adagrad
override RULE: u32 = 0u;
// SGD and RMSprop: a momentum buffer exists (SGD: s0, RMSprop: s1).
override MOMENTUM: u32 = 0u;
override NESTEROV: u32 = 0u;
// Adam: s2 holds the running maximum of v.
override AMSGRAD: u32 = 0u;
// RMSprop: s2 holds the running mean of the gradient.
override CENTERED: u32 = 0u;
// Which state slots the rule keeps (Rule::slots in optim.rs): only those are touched.
override USE0: bool = false;
override USE1: bool = false;
override USE2: bool = false;

@group(0) @binding(0) var<uniform> p: Params;

// Four values of one parameter: its value, gradient and state slots.
struct Elem {
    theta: vec4<f32>,
    g: vec4<f32>,
    s0: vec4<f32>,
    s1: vec4<f32>,
    s2: vec4<f32>,
}

// The previous value of a state slot, or its initial value on the first step
// (select, not arithmetic, so that garbage or NaN in fresh buffers cannot leak in).
fn prev(old: vec4<f32>, init: f32) -> vec4<f32> {
    return select(old, vec4<f32>(init), p.first != 0u);
}

// One step of the rule: the new value and state (the gradient field is left as is).
fn apply(e: Elem) -> Elem {
    var r = e;
    var theta = e.theta;
    var g = e.g;
    switch RULE {
        case 0u: {
            // SGD: g += wd*theta; b_1 = g, b_t = mu*b + (1 - tau)*g;
            // nesterov: g += mu*b, else g = b; theta -= lr*g
            g = g + p.wd * theta;
            if MOMENTUM != 0u {
                let buf = select(p.a * e.s0 + (1.0 - p.b) * g, g, p.first != 0u);
                r.s0 = buf;
                if NESTEROV != 0u {
                    g = g + p.a * buf;
                } else {
                    g = buf;
                }
            }
            r.theta = theta - p.lr * g;
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
            let m = p.a * prev(e.s0, 0.0) + (1.0 - p.a) * g;
            var v = p.b * prev(e.s1, 0.0) + (1.0 - p.b) * g * g;
            r.s0 = m;
            r.s1 = v;
            if AMSGRAD != 0u {
                v = max(prev(e.s2, 0.0), v);
                r.s2 = v;
            }
            let denom = sqrt(v) / p.bc2_sqrt + p.eps;
            r.theta = theta - (p.lr / p.bc1) * m / denom;
        }
        case 3u: {
            // RMSprop: g += wd*theta; v = alpha*v + (1-alpha)*g^2;
            // centered: ga = alpha*ga + (1-alpha)*g, v~ = v - ga^2;
            // momentum: b = mu*b + g/(sqrt(v~)+eps), theta -= lr*b; else theta -= lr*g/(sqrt(v~)+eps)
            g = g + p.wd * theta;
            let v = p.a * prev(e.s0, 0.0) + (1.0 - p.a) * g * g;
            r.s0 = v;
            var vt = v;
            if CENTERED != 0u {
                let ga = p.a * prev(e.s2, 0.0) + (1.0 - p.a) * g;
                r.s2 = ga;
                vt = v - ga * ga;
            }
            let scaled = g / (sqrt(vt) + p.eps);
            if MOMENTUM != 0u {
                let buf = p.b * prev(e.s1, 0.0) + scaled;
                r.s1 = buf;
                r.theta = theta - p.lr * buf;
            } else {
                r.theta = theta - p.lr * scaled;
            }
        }
        default: {
            // Adagrad: g += wd*theta; sum += g^2 (sum_0 = initial accumulator);
            // theta -= clr * g / (sqrt(sum) + eps), clr = lr / (1 + (t-1)*lr_decay)
            g = g + p.wd * theta;
            let sum = prev(e.s0, p.b) + g * g;
            r.s0 = sum;
            r.theta = theta - p.lr * g / (sqrt(sum) + p.eps);
        }
    }
    return r;
}

// The new value where it lies before n; past it (a buffer's padding to a multiple of
// 4) the old one stays.
fn in_range(i: u32, n: u32, old: vec4<f32>, updated: vec4<f32>) -> vec4<f32> {
    return select(old, updated, vec4<u32>(i * 4u) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(n));
}

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// One tensor: x the gradient, y the parameter, s0..s2 the state slots.
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> s0: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> s1: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> s2: array<vec4<f32>>;

@compute @workgroup_size(256)
fn update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i * 4u >= p.n {
        return;
    }
    var e = Elem(y[i], x[i], vec4<f32>(), vec4<f32>(), vec4<f32>());
    if USE0 { e.s0 = s0[i]; }
    if USE1 { e.s1 = s1[i]; }
    if USE2 { e.s2 = s2[i]; }
    let r = apply(e);
    y[i] = in_range(i, p.n, e.theta, r.theta);
    if USE0 { s0[i] = r.s0; }
    if USE1 { s1[i] = r.s1; }
    if USE2 { s2[i] = r.s2; }
}

// Four tensors (p.n, p.n1, p.n2, p.n3 values; 0 for an unused slot): gradients gk,
// parameters pk, state slots ak, bk, ck of tensor k. Invocations run over the tensors'
// vec4s one after another.
@group(0) @binding(1) var<storage, read> g0: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> g1: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> g2: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> g3: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> p0: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> p1: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> p2: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> p3: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> a0: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> a1: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> a2: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> a3: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read_write> b0: array<vec4<f32>>;
@group(0) @binding(14) var<storage, read_write> b1: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read_write> b2: array<vec4<f32>>;
@group(0) @binding(16) var<storage, read_write> b3: array<vec4<f32>>;
@group(0) @binding(17) var<storage, read_write> c0: array<vec4<f32>>;
@group(0) @binding(18) var<storage, read_write> c1: array<vec4<f32>>;
@group(0) @binding(19) var<storage, read_write> c2: array<vec4<f32>>;
@group(0) @binding(20) var<storage, read_write> c3: array<vec4<f32>>;

@compute @workgroup_size(256)
fn update4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = vec4<u32>(p.n, p.n1, p.n2, p.n3);
    let v = (n + vec4<u32>(3u)) / 4u;
    var i = index(gid, nwg);
    // Which tensor this vec4 belongs to, and its index there.
    var k = 0u;
    for (; k < 4u; k++) {
        if i < v[k] {
            break;
        }
        i -= v[k];
    }
    if k == 4u {
        return;
    }
    // Bindings cannot be indexed, hence a case per tensor.
    var e: Elem;
    switch k {
        case 0u: {
            e = Elem(p0[i], g0[i], vec4<f32>(), vec4<f32>(), vec4<f32>());
            if USE0 { e.s0 = a0[i]; }
            if USE1 { e.s1 = b0[i]; }
            if USE2 { e.s2 = c0[i]; }
        }
        case 1u: {
            e = Elem(p1[i], g1[i], vec4<f32>(), vec4<f32>(), vec4<f32>());
            if USE0 { e.s0 = a1[i]; }
            if USE1 { e.s1 = b1[i]; }
            if USE2 { e.s2 = c1[i]; }
        }
        case 2u: {
            e = Elem(p2[i], g2[i], vec4<f32>(), vec4<f32>(), vec4<f32>());
            if USE0 { e.s0 = a2[i]; }
            if USE1 { e.s1 = b2[i]; }
            if USE2 { e.s2 = c2[i]; }
        }
        default: {
            e = Elem(p3[i], g3[i], vec4<f32>(), vec4<f32>(), vec4<f32>());
            if USE0 { e.s0 = a3[i]; }
            if USE1 { e.s1 = b3[i]; }
            if USE2 { e.s2 = c3[i]; }
        }
    }
    var r = apply(e);
    r.theta = in_range(i, n[k], e.theta, r.theta);
    switch k {
        case 0u: {
            p0[i] = r.theta;
            if USE0 { a0[i] = r.s0; }
            if USE1 { b0[i] = r.s1; }
            if USE2 { c0[i] = r.s2; }
        }
        case 1u: {
            p1[i] = r.theta;
            if USE0 { a1[i] = r.s0; }
            if USE1 { b1[i] = r.s1; }
            if USE2 { c1[i] = r.s2; }
        }
        case 2u: {
            p2[i] = r.theta;
            if USE0 { a2[i] = r.s0; }
            if USE1 { b2[i] = r.s1; }
            if USE2 { c2[i] = r.s2; }
        }
        default: {
            p3[i] = r.theta;
            if USE0 { a3[i] = r.s0; }
            if USE1 { b3[i] = r.s1; }
            if USE2 { c3[i] = r.s2; }
        }
    }
}
