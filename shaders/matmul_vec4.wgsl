// C[M,N] = op(A) * op(B) (+ bias) then activation, 8x8 outputs per invocation, vec4 loads,
// no workgroup memory: the kernel for CPU adapters (lavapipe), where barriers are costly
// and each invocation is one SIMD lane that wants long independent FMA chains.
// Layouts as in matmul.wgsl. Needs K % 4 == 0, N % 4 == 0, and M % 4 == 0 when TA.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    act: u32,
    alpha: f32,
    // Read by the lane kernels only (matmul_lane.wgsl); these take pipeline constants.
    flags: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> c: array<vec4<f32>>;

override TA: bool = false;
override TB: bool = false;
override BIAS: bool = false;
// Store C transposed ([N, M]), as in matmul.wgsl.
override TC: bool = false;

// Writes four outputs of `row` starting at column 4 * col4.
fn store4(row: u32, col4: u32, v: vec4<f32>) {
    if TC {
        for (var j = 0u; j < 4u; j++) {
            let e = (col4 * 4u + j) * p.m + row;
            c[e / 4u][e % 4u] = v[j];
        }
    } else {
        c[row * (p.n / 4u) + col4] = v;
    }
}

// A[row0 + i][k0 .. k0+4] for i in 0..8, as vec4 over k.
fn load_a(row0: u32, k0: u32) -> array<vec4<f32>, 8> {
    var r: array<vec4<f32>, 8>;
    let last = p.m - 1u;
    if TA {
        // Storage [K, M]: read two vec4 along m for each of the 4 k, then transpose.
        let m4 = p.m / 4u;
        let mc = min(row0 / 4u, m4 - 1u);
        let mc1 = min(row0 / 4u + 1u, m4 - 1u);
        var t: array<vec4<f32>, 8>;
        for (var kk = 0u; kk < 4u; kk++) {
            t[kk] = a[(k0 + kk) * m4 + mc];
            t[kk + 4u] = a[(k0 + kk) * m4 + mc1];
        }
        for (var i = 0u; i < 4u; i++) {
            r[i] = vec4<f32>(t[0][i], t[1][i], t[2][i], t[3][i]);
            r[i + 4u] = vec4<f32>(t[4][i], t[5][i], t[6][i], t[7][i]);
        }
    } else {
        let k4 = p.k / 4u;
        for (var i = 0u; i < 8u; i++) {
            r[i] = a[min(row0 + i, last) * k4 + k0 / 4u];
        }
    }
    return r;
}

// B[k0 + kk][col0 .. col0+8] for kk in 0..4, as two vec4 over n: [2*kk] low, [2*kk+1] high.
fn load_b(k0: u32, col0: u32) -> array<vec4<f32>, 8> {
    var r: array<vec4<f32>, 8>;
    let n4 = p.n / 4u;
    if TB {
        // Storage [N, K]: read a vec4 along k for each of the 8 columns, then transpose.
        let k4 = p.k / 4u;
        var t: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            t[j] = b[min(col0 + j, p.n - 1u) * k4 + k0 / 4u];
        }
        for (var kk = 0u; kk < 4u; kk++) {
            r[2u * kk] = vec4<f32>(t[0][kk], t[1][kk], t[2][kk], t[3][kk]);
            r[2u * kk + 1u] = vec4<f32>(t[4][kk], t[5][kk], t[6][kk], t[7][kk]);
        }
    } else {
        let c0 = min(col0 / 4u, n4 - 1u);
        let c1 = min(col0 / 4u + 1u, n4 - 1u);
        for (var kk = 0u; kk < 4u; kk++) {
            r[2u * kk] = b[(k0 + kk) * n4 + c0];
            r[2u * kk + 1u] = b[(k0 + kk) * n4 + c1];
        }
    }
    return r;
}

fn finish(col4: u32, v: vec4<f32>) -> vec4<f32> {
    var x = v;
    if BIAS {
        x += bias[col4];
    }
    if p.act == 0u {
        return x;
    }
    return vec4<f32>(
        act_forward(p.act, p.alpha, x.x),
        act_forward(p.act, p.alpha, x.y),
        act_forward(p.act, p.alpha, x.z),
        act_forward(p.act, p.alpha, x.w)
    );
}

@compute @workgroup_size(8, 8)
fn vec4_8x8(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 8u;
    let col0 = gid.x * 8u;
    if row0 >= p.m || col0 >= p.n {
        return;
    }
    var lo: array<vec4<f32>, 8>;
    var hi: array<vec4<f32>, 8>;
    for (var k0 = 0u; k0 < p.k; k0 += 4u) {
        let av = load_a(row0, k0);
        let bv = load_b(k0, col0);
        for (var i = 0u; i < 8u; i++) {
            lo[i] += av[i].x * bv[0] + av[i].y * bv[2] + av[i].z * bv[4] + av[i].w * bv[6];
            hi[i] += av[i].x * bv[1] + av[i].y * bv[3] + av[i].z * bv[5] + av[i].w * bv[7];
        }
    }
    let n4 = p.n / 4u;
    let c0 = col0 / 4u;
    for (var i = 0u; i < 8u; i++) {
        let row = row0 + i;
        if row < p.m {
            store4(row, c0, finish(c0, lo[i]));
            if c0 + 1u < n4 {
                store4(row, c0 + 1u, finish(c0 + 1u, hi[i]));
            }
        }
    }
}
