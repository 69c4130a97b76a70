// Gathers rows of a data set that lives on the GPU into a batch, by shuffled indices:
// out[i, :] = data[index[start + i] - lo, :] for i < rows, for the rows whose index falls
// in this chunk [lo, hi). A data set larger than one binding is uploaded as several
// chunks and gathered with one dispatch per chunk. Lets training read its batches
// without any host copy per step.

struct Params {
    rows: u32,
    cols: u32,
    start: u32,
    lo: u32,
    hi: u32,
    // The *_y entries: values per target row.
    ycols: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read> index: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// The row of this chunk that batch row i comes from, or none when it lies elsewhere.
fn chunk_row(i: u32) -> u32 {
    let src = u32(index[p.start + i]);
    return select(NONE, src - p.lo, src >= p.lo && src < p.hi);
}

const NONE: u32 = 0xffffffffu;

@compute @workgroup_size(256)
fn gather_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 256u;
    if e >= p.rows * p.cols {
        return;
    }
    let r = chunk_row(e / p.cols);
    if r != NONE {
        out[e] = data[r * p.cols + e % p.cols];
    }
}

// The same for a data set of at most 256 distinct values stored as one byte per value
// (packed four to a word) and a palette of the values: MNIST-like pixel data takes a
// quarter of the memory and the gathered batch holds exactly the original f32 values.
@group(0) @binding(1) var<storage, read> packed: array<u32>;
@group(0) @binding(3) var<storage, read> palette: array<f32>;
@group(0) @binding(4) var<storage, read_write> out_p: array<f32>;

@compute @workgroup_size(256)
fn gather_palette(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 256u;
    if e >= p.rows * p.cols {
        return;
    }
    let j = e % p.cols;
    let r = chunk_row(e / p.cols);
    if r != NONE {
        // Rows are padded to whole words: (cols + 3) / 4 words each.
        let word = packed[r * ((p.cols + 3u) / 4u) + j / 4u];
        let byte = (word >> (8u * (j % 4u))) & 0xffu;
        out_p[e] = palette[byte];
    }
}

// gather_rows for rows of a multiple of 4 values, 4 per invocation: on lavapipe every
// storage access costs a loop over the SIMD lanes, so a vec4 one costs a quarter as much.
@group(0) @binding(1) var<storage, read> data4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn gather_rows4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 256u;
    let c4 = p.cols / 4u;
    if e >= p.rows * c4 {
        return;
    }
    let r = chunk_row(e / c4);
    if r != NONE {
        out4[e] = data4[r * c4 + e % c4];
    }
}

// gather_palette for rows of a multiple of 4 values: one packed word gives 4 outputs.
@group(0) @binding(4) var<storage, read_write> out_p4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn gather_palette4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 256u;
    let c4 = p.cols / 4u;
    if e >= p.rows * c4 {
        return;
    }
    let r = chunk_row(e / c4);
    if r != NONE {
        let word = packed[r * c4 + e % c4];
        let bytes = (vec4<u32>(word) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu);
        out_p4[e] = vec4<f32>(palette[bytes.x], palette[bytes.y], palette[bytes.z], palette[bytes.w]);
    }
}

// The *_y entries gather a batch's inputs and its targets in one dispatch: invocations
// past the inputs' vec4s copy the targets' values (ycols per row) from yd to yo.
@group(0) @binding(3) var<storage, read> yd: array<f32>;
@group(0) @binding(4) var<storage, read_write> xo4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> yo: array<f32>;

@compute @workgroup_size(256)
fn gather_rows4_y(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 256u;
    let c4 = p.cols / 4u;
    let nx = p.rows * c4;
    if e < nx {
        let r = chunk_row(e / c4);
        if r != NONE {
            xo4[e] = data4[r * c4 + e % c4];
        }
        return;
    }
    let t = e - nx;
    if t < p.rows * p.ycols {
        let r = chunk_row(t / p.ycols);
        if r != NONE {
            yo[t] = yd[r * p.ycols + t % p.ycols];
        }
    }
}

@group(0) @binding(4) var<storage, read> yd_p: array<f32>;
@group(0) @binding(5) var<storage, read_write> xo_p4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> yo_p: array<f32>;

@compute @workgroup_size(256)
fn gather_palette4_y(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 256u;
    let c4 = p.cols / 4u;
    let nx = p.rows * c4;
    if e < nx {
        let r = chunk_row(e / c4);
        if r != NONE {
            let word = packed[r * c4 + e % c4];
            let bytes = (vec4<u32>(word) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu);
            xo_p4[e] = vec4<f32>(palette[bytes.x], palette[bytes.y], palette[bytes.z], palette[bytes.w]);
        }
        return;
    }
    let t = e - nx;
    if t < p.rows * p.ycols {
        let r = chunk_row(t / p.ycols);
        if r != NONE {
            yo_p[t] = yd_p[r * p.ycols + t % p.ycols];
        }
    }
}
