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
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read> index: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn gather_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 256u;
    if e >= p.rows * p.cols {
        return;
    }
    let i = e / p.cols;
    let j = e % p.cols;
    let src = u32(index[p.start + i]);
    if src >= p.lo && src < p.hi {
        out[e] = data[(src - p.lo) * p.cols + j];
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
    let i = e / p.cols;
    let j = e % p.cols;
    let src = u32(index[p.start + i]);
    if src >= p.lo && src < p.hi {
        // Rows are padded to whole words: (cols + 3) / 4 words each.
        let word = packed[(src - p.lo) * ((p.cols + 3u) / 4u) + j / 4u];
        let byte = (word >> (8u * (j % 4u))) & 0xffu;
        out_p[e] = palette[byte];
    }
}
