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

// The numbers `apply` uses: the uniform's (update, update4), or one stacked trial's
// row of the hyperparameter table (update_trials). `on` is 0 for a trial another
// dispatch updates (it trains with a rule of another shape).
struct Hyper {
    lr: f32,
    wd: f32,
    a: f32,
    b: f32,
    eps: f32,
    bc1: f32,
    bc2_sqrt: f32,
    on: f32,
}

var<private> h: Hyper;

fn from_uniform() -> Hyper {
    return Hyper(p.lr, p.wd, p.a, p.b, p.eps, p.bc1, p.bc2_sqrt, 1.0);
}

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
            g = g + h.wd * theta;
            if MOMENTUM != 0u {
                let buf = select(h.a * e.s0 + (1.0 - h.b) * g, g, p.first != 0u);
                r.s0 = buf;
                if NESTEROV != 0u {
                    g = g + h.a * buf;
                } else {
                    g = buf;
                }
            }
            r.theta = theta - h.lr * g;
        }
        case 1u, 2u: {
            // Adam: g += wd*theta.  AdamW: theta *= 1 - lr*wd.
            // m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; amsgrad: vmax = max(vmax, v), v <- vmax;
            // theta -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
            if RULE == 2u {
                theta = theta * (1.0 - h.lr * h.wd);
            } else {
                g = g + h.wd * theta;
            }
            let m = h.a * prev(e.s0, 0.0) + (1.0 - h.a) * g;
            var v = h.b * prev(e.s1, 0.0) + (1.0 - h.b) * g * g;
            r.s0 = m;
            r.s1 = v;
            if AMSGRAD != 0u {
                v = max(prev(e.s2, 0.0), v);
                r.s2 = v;
            }
            let denom = sqrt(v) / h.bc2_sqrt + h.eps;
            r.theta = theta - (h.lr / h.bc1) * m / denom;
        }
        case 3u: {
            // RMSprop: g += wd*theta; v = alpha*v + (1-alpha)*g^2;
            // centered: ga = alpha*ga + (1-alpha)*g, v~ = v - ga^2;
            // momentum: b = mu*b + g/(sqrt(v~)+eps), theta -= lr*b; else theta -= lr*g/(sqrt(v~)+eps)
            g = g + h.wd * theta;
            let v = h.a * prev(e.s0, 0.0) + (1.0 - h.a) * g * g;
            r.s0 = v;
            var vt = v;
            if CENTERED != 0u {
                let ga = h.a * prev(e.s2, 0.0) + (1.0 - h.a) * g;
                r.s2 = ga;
                vt = v - ga * ga;
            }
            let scaled = g / (sqrt(vt) + h.eps);
            if MOMENTUM != 0u {
                let buf = h.b * prev(e.s1, 0.0) + scaled;
                r.s1 = buf;
                r.theta = theta - h.lr * buf;
            } else {
                r.theta = theta - h.lr * scaled;
            }
        }
        default: {
            // Adagrad: g += wd*theta; sum += g^2 (sum_0 = initial accumulator);
            // theta -= clr * g / (sqrt(sum) + eps), clr = lr / (1 + (t-1)*lr_decay)
            g = g + h.wd * theta;
            let sum = prev(e.s0, h.b) + g * g;
            r.s0 = sum;
            r.theta = theta - h.lr * g / (sqrt(sum) + h.eps);
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
    h = from_uniform();
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
    h = from_uniform();
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

// Stacked trials: one parameter tensor of every trial, trial t's p.n values at t * p.n
// (t = global_invocation_id.z) in tv with their gradients tg and state t0..t2, trial t
// updated with row p.base + t of the table `hyper`. Four values per invocation, loaded
// one by one since a trial's values need not start on a multiple of 4.
// Rows of two vec4s: two loads where eight scalar ones cost four times as much on
// lavapipe (each storage access loops over the SIMD lanes).
@group(0) @binding(1) var<storage, read> hyper: array<vec4<f32>>;

fn trial_hyper(row: u32) -> Hyper {
    let a = hyper[2u * row];
    let b = hyper[2u * row + 1u];
    return Hyper(a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w);
}
@group(0) @binding(2) var<storage, read> tg: array<f32>;
@group(0) @binding(3) var<storage, read_write> tv: array<f32>;
@group(0) @binding(4) var<storage, read_write> t0: array<f32>;
@group(0) @binding(5) var<storage, read_write> t1: array<f32>;
@group(0) @binding(6) var<storage, read_write> t2: array<f32>;

@compute @workgroup_size(256)
fn update_trials(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = (gid.x + gid.y * nwg.x * 256u) * 4u;
    if i >= p.n {
        return;
    }
    h = trial_hyper(p.base + gid.z);
    if h.on == 0.0 {
        return;
    }
    let b = gid.z * p.n + i;
    // Lanes past the trial's end read its last value and are not stored.
    let l = vec4<u32>(b) + min(vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u - i));
    var e = Elem(
        vec4<f32>(tv[l.x], tv[l.y], tv[l.z], tv[l.w]),
        vec4<f32>(tg[l.x], tg[l.y], tg[l.z], tg[l.w]),
        vec4<f32>(), vec4<f32>(), vec4<f32>(),
    );
    if USE0 { e.s0 = vec4<f32>(t0[l.x], t0[l.y], t0[l.z], t0[l.w]); }
    if USE1 { e.s1 = vec4<f32>(t1[l.x], t1[l.y], t1[l.z], t1[l.w]); }
    if USE2 { e.s2 = vec4<f32>(t2[l.x], t2[l.y], t2[l.z], t2[l.w]); }
    let r = apply(e);
    for (var j = 0u; j < min(4u, p.n - i); j++) {
        tv[b + j] = r.theta[j];
        if USE0 { t0[b + j] = r.s0[j]; }
        if USE1 { t1[b + j] = r.s1[j]; }
        if USE2 { t2[b + j] = r.s2[j]; }
    }
}

// update_trials for trials of a multiple of 4 values each: whole vec4 loads.
@group(0) @binding(2) var<storage, read> tg4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> tv4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> t04: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> t14: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> t24: array<vec4<f32>>;

@compute @workgroup_size(256)
fn update_trials4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i * 4u >= p.n {
        return;
    }
    h = trial_hyper(p.base + gid.z);
    if h.on == 0.0 {
        return;
    }
    let b = gid.z * (p.n / 4u) + i;
    var e = Elem(tv4[b], tg4[b], vec4<f32>(), vec4<f32>(), vec4<f32>());
    if USE0 { e.s0 = t04[b]; }
    if USE1 { e.s1 = t14[b]; }
    if USE2 { e.s2 = t24[b]; }
    let r = apply(e);
    tv4[b] = r.theta;
    if USE0 { t04[b] = r.s0; }
    if USE1 { t14[b] = r.s1; }
    if USE2 { t24[b] = r.s2; }
}
