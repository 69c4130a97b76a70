// C[M,N] = op(A) * op(B) (+ bias) then activation, for CPU adapters (lavapipe).
// Layouts as in matmul.wgsl. Needs N % 4 == 0, K % 4 == 0, and M % 4 == 0 when TA.
//
// lavapipe runs the invocations of a workgroup as SIMD lanes. A load whose address is
// the same for every lane (it depends only on the workgroup id, uniforms and the loop
// counter) is one scalar load and a broadcast; a load that differs per lane is a gather.
// So each workgroup takes 4 rows of C (uniform) and each lane 4 columns: per 4 steps of k
// a lane does 4 uniform vec4 loads of A, 4 gathered vec4 loads of B and 64 FMAs, with
// the 4x4 accumulators in registers and no workgroup memory or barriers.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    act: u32,
    alpha: f32,
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
// Rows of C per workgroup: 4 or 8.
override ROWS: u32 = 4u;
const LANES: u32 = 16u;

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

// A[row][k0..k0+4] as a vec4 over k; uniform across the workgroup's lanes.
fn a_row(row: u32, k0: u32) -> vec4<f32> {
    let r = min(row, p.m - 1u);
    if TA {
        let m4 = p.m / 4u;
        let q = r / 4u;
        let e = r % 4u;
        return vec4<f32>(a[k0 * m4 + q][e], a[(k0 + 1u) * m4 + q][e], a[(k0 + 2u) * m4 + q][e], a[(k0 + 3u) * m4 + q][e]);
    }
    return a[r * (p.k / 4u) + k0 / 4u];
}

@compute @workgroup_size(16)
fn rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * ROWS;
    let n4 = p.n / 4u;
    let col4 = min(wid.x * LANES + lid.x, n4 - 1u);
    let k4 = p.k / 4u;
    var acc: array<vec4<f32>, 8>;
    for (var k0 = 0u; k0 < p.k; k0 += 4u) {
        // B[k0 + kk][4 columns of this lane], as vec4 over columns.
        var b0: vec4<f32>;
        var b1: vec4<f32>;
        var b2: vec4<f32>;
        var b3: vec4<f32>;
        if TB {
            let c0 = b[(col4 * 4u) * k4 + k0 / 4u];
            let c1 = b[(col4 * 4u + 1u) * k4 + k0 / 4u];
            let c2 = b[(col4 * 4u + 2u) * k4 + k0 / 4u];
            let c3 = b[(col4 * 4u + 3u) * k4 + k0 / 4u];
            b0 = vec4<f32>(c0.x, c1.x, c2.x, c3.x);
            b1 = vec4<f32>(c0.y, c1.y, c2.y, c3.y);
            b2 = vec4<f32>(c0.z, c1.z, c2.z, c3.z);
            b3 = vec4<f32>(c0.w, c1.w, c2.w, c3.w);
        } else {
            b0 = b[k0 * n4 + col4];
            b1 = b[(k0 + 1u) * n4 + col4];
            b2 = b[(k0 + 2u) * n4 + col4];
            b3 = b[(k0 + 3u) * n4 + col4];
        }
        for (var i = 0u; i < ROWS; i++) {
            let av = a_row(row0 + i, k0);
            acc[i] += av.x * b0 + av.y * b1 + av.z * b2 + av.w * b3;
        }
    }
    if wid.x * LANES + lid.x >= n4 {
        return;
    }
    for (var i = 0u; i < ROWS; i++) {
        let row = row0 + i;
        if row < p.m {
            store4(row, col4, finish(col4, acc[i]));
        }
    }
}
