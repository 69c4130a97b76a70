//! IDX files (the MNIST format), raw or gzip-compressed.
//!
//! Compression is detected from the gzip magic bytes, never from the file name,
//! and a header's claimed size is checked against the bytes actually present
//! before anything of that size is allocated.

use super::Dataset;
use crate::error::{Error, Result};
use flate2::read::GzDecoder;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const UBYTE: u8 = 0x08;

/// Images and labels of one IDX pair, kept as bytes (e.g. for a u8 upload to the GPU).
#[derive(Debug, Clone, PartialEq)]
pub struct IdxSet {
    /// Pixels, `[n, rows, cols]` row-major.
    pub images: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
    /// Number of images.
    pub n: usize,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
}

impl IdxSet {
    /// Converts to a [`Dataset`] with raw pixel values 0..255 as features.
    pub fn to_dataset(&self, classes: usize) -> Dataset {
        Dataset {
            x: self.images.iter().map(|&p| p as f32).collect(),
            y: self.labels.iter().map(|&l| l as f32).collect(),
            n: self.n,
            // The loaders checked this product; saturating keeps hand-made sets panic-free
            // (Dataset::validate then reports the mismatch).
            features: self.rows.saturating_mul(self.cols),
            classes,
            image: Some((1, self.rows, self.cols)),
        }
    }
}

/// Puts back the two bytes sniffed from `r`, decompressing when they are the gzip magic.
fn sniff<'a, R: Read + 'a>(mut r: R) -> std::io::Result<(Box<dyn Read + 'a>, bool)> {
    let mut magic = [0u8; 2];
    let got = read_full(&mut r, &mut magic)?;
    let head = std::io::Cursor::new(magic[..got].to_vec());
    let chained = head.chain(r);
    if got == 2 && magic == GZIP_MAGIC {
        Ok((Box::new(GzDecoder::new(chained)), true))
    } else {
        Ok((Box::new(chained), false))
    }
}

/// Opens `path`, transparently decompressing when it starts with the gzip magic.
fn open(path: &Path) -> Result<(Box<dyn Read>, bool)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    sniff(BufReader::new(file)).map_err(|e| Error::io(path, e))
}

fn what(name: &str, kind: &str) -> String {
    format!("{name} (IDX {kind} file)")
}

/// Maps a read failure: inside a gzip stream, bad data is a format problem, not an I/O one.
fn read_err(name: &str, kind: &str, gz: bool, e: std::io::Error) -> Error {
    let corrupt = matches!(
        e.kind(),
        ErrorKind::InvalidData | ErrorKind::InvalidInput | ErrorKind::UnexpectedEof
    );
    if gz && corrupt {
        Error::format(what(name, kind), format!("corrupt gzip stream: {e}"))
    } else {
        Error::io(name, e)
    }
}

/// Reads up to `buf.len()` bytes; returns how many were read (fewer only at end of data).
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// What one IDX file holds: its kind, number of dimensions and their names.
struct Layout {
    kind: &'static str,
    ndim: u8,
    dim_names: &'static str,
}

const IMAGES: Layout = Layout {
    kind: "images",
    ndim: 3,
    dim_names: "count, rows, cols",
};
const LABELS: Layout = Layout {
    kind: "labels",
    ndim: 1,
    dim_names: "count",
};

/// Reads and checks the header, then exactly the claimed payload; returns (dims, payload).
fn read_idx(
    r: &mut dyn Read,
    gz: bool,
    name: &str,
    layout: &Layout,
) -> Result<(Vec<usize>, Vec<u8>)> {
    let dims = read_header(r, gz, name, layout)?;
    let payload = read_payload(r, gz, name, layout, &dims)?;
    Ok((dims, payload))
}

/// Reads the magic number and the dimensions, checked against `layout`.
fn read_header(r: &mut dyn Read, gz: bool, name: &str, layout: &Layout) -> Result<Vec<usize>> {
    let Layout {
        kind,
        ndim,
        dim_names,
    } = *layout;
    let expected_magic = 0x0800u32 | ndim as u32;
    let mut head = [0u8; 4];
    let got = read_full(r, &mut head).map_err(|e| read_err(name, kind, gz, e))?;
    if got < 4 {
        return Err(Error::format(
            what(name, kind),
            format!(
                "truncated: {got} bytes, too short for the 4-byte magic {expected_magic:#010x}"
            ),
        ));
    }
    if head[0] != 0 || head[1] != 0 || head[2] != UBYTE {
        return Err(Error::format(
            what(name, kind),
            format!(
                "wrong magic {:#010x}, expected {expected_magic:#010x} (unsigned bytes, {ndim} dimension{})",
                u32::from_be_bytes(head),
                if ndim == 1 { "" } else { "s" }
            ),
        ));
    }
    if head[3] != ndim {
        return Err(Error::format(
            what(name, kind),
            format!(
                "magic {:#010x} declares {} dimension(s), expected {ndim} ({dim_names}; magic {expected_magic:#010x})",
                u32::from_be_bytes(head),
                head[3]
            ),
        ));
    }
    let mut dims_raw = vec![0u8; 4 * ndim as usize];
    let got = read_full(r, &mut dims_raw).map_err(|e| read_err(name, kind, gz, e))?;
    if got < dims_raw.len() {
        return Err(Error::format(
            what(name, kind),
            format!(
                "truncated header: {} of {} bytes of dimensions ({dim_names})",
                got,
                dims_raw.len()
            ),
        ));
    }
    Ok(dims_raw
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect())
}

/// Reads exactly the bytes `dims` claim, and fails on fewer or more.
fn read_payload(
    r: &mut dyn Read,
    gz: bool,
    name: &str,
    layout: &Layout,
    dims: &[usize],
) -> Result<Vec<u8>> {
    let (kind, dim_names) = (layout.kind, layout.dim_names);
    let claimed = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| {
            Error::format(
                what(name, kind),
                format!("dimensions {dims:?} overflow a byte count"),
            )
        })?;
    // Allocation grows with the bytes actually read, never with the header's claim,
    // and one byte past the claim is enough to detect trailing garbage.
    let mut payload = Vec::new();
    r.take(claimed.saturating_add(1))
        .read_to_end(&mut payload)
        .map_err(|e| read_err(name, kind, gz, e))?;
    let have = payload.len() as u64;
    if have < claimed {
        return Err(Error::format(
            what(name, kind),
            format!(
                "truncated: header claims {dim_names} = {dims:?}, i.e. {claimed} data bytes, but only {have} follow"
            ),
        ));
    }
    if have > claimed {
        return Err(Error::format(
            what(name, kind),
            format!(
                "trailing data after the {claimed} bytes that the header ({dim_names} = {dims:?}) claims"
            ),
        ));
    }
    Ok(payload)
}

/// (pixels, n, rows, cols) from the dimensions `read_idx` checked for an image file.
fn images_of(
    name: &str,
    (dims, data): (Vec<usize>, Vec<u8>),
) -> Result<(Vec<u8>, usize, usize, usize)> {
    match dims.as_slice() {
        &[n, rows, cols] => Ok((data, n, rows, cols)),
        other => Err(Error::format(
            what(name, "images"),
            format!("{} dimensions, expected 3", other.len()),
        )),
    }
}

/// Reads an IDX image file (magic 0x00000803): returns (pixels, n, rows, cols).
pub fn read_images(path: impl AsRef<Path>) -> Result<(Vec<u8>, usize, usize, usize)> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let (mut r, gz) = open(path)?;
    images_of(&name, read_idx(&mut r, gz, &name, &IMAGES)?)
}

/// Reads an IDX label file (magic 0x00000801).
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let (mut r, gz) = open(path)?;
    Ok(read_idx(&mut r, gz, &name, &LABELS)?.1)
}

/// Parses the bytes of an IDX image file (raw or gzip) held in memory; `name` names
/// them in errors. Returns (pixels, n, rows, cols), as [`read_images`].
pub fn parse_images(bytes: &[u8], name: &str) -> Result<(Vec<u8>, usize, usize, usize)> {
    let (mut r, gz) = sniff(bytes).map_err(|e| Error::io(name, e))?;
    images_of(name, read_idx(&mut r, gz, name, &IMAGES)?)
}

/// Parses the bytes of an IDX label file (raw or gzip) held in memory, as [`read_labels`].
pub fn parse_labels(bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    let (mut r, gz) = sniff(bytes).map_err(|e| Error::io(name, e))?;
    Ok(read_idx(&mut r, gz, name, &LABELS)?.1)
}

/// Reads an image file and its label file, checking that the counts agree.
pub fn load_pair(images: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<IdxSet> {
    let (images_path, labels_path) = (images.as_ref(), labels.as_ref());
    let (pixels, n, rows, cols) = read_images(images_path)?;
    let labels = read_labels(labels_path)?;
    if labels.len() != n {
        return Err(Error::format(
            what(&labels_path.display().to_string(), "labels"),
            format!(
                "holds {} labels, expected {n}, one per image in {}",
                labels.len(),
                images_path.display()
            ),
        ));
    }
    Ok(IdxSet {
        images: pixels,
        labels,
        n,
        rows,
        cols,
    })
}

/// Finds `stem` in `dir` under the standard name or the dotted variant, with or without `.gz`.
fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    // "train-images-idx3-ubyte" also ships as "train-images.idx3-ubyte".
    let dotted = stem.replacen("-idx", ".idx", 1);
    let names = [
        format!("{stem}.gz"),
        stem.to_string(),
        format!("{dotted}.gz"),
        dotted,
    ];
    for name in &names {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::io(
        dir.join(stem),
        std::io::Error::new(
            ErrorKind::NotFound,
            format!("none of {} found in {}", names.join(", "), dir.display()),
        ),
    ))
}

/// Loads MNIST-style (train, test) pairs from `dir` as bytes, gzipped or raw.
pub fn load_mnist_u8(dir: impl AsRef<Path>) -> Result<(IdxSet, IdxSet)> {
    let dir = dir.as_ref();
    let train = load_pair(
        find(dir, "train-images-idx3-ubyte")?,
        find(dir, "train-labels-idx1-ubyte")?,
    )?;
    let test = load_pair(
        find(dir, "t10k-images-idx3-ubyte")?,
        find(dir, "t10k-labels-idx1-ubyte")?,
    )?;
    for (set, name) in [(&train, "train"), (&test, "t10k")] {
        if set.n == 0 || set.rows * set.cols == 0 {
            return Err(Error::format(
                format!("{} ({name} IDX files)", dir.display()),
                format!("no data: {} images of {}x{}", set.n, set.rows, set.cols),
            ));
        }
    }
    if (train.rows, train.cols) != (test.rows, test.cols) {
        return Err(Error::format(
            format!("{} (IDX files)", dir.display()),
            format!(
                "train images are {}x{} but test images {}x{}",
                train.rows, train.cols, test.rows, test.cols
            ),
        ));
    }
    Ok((train, test))
}

/// Loads MNIST-style (train, test) data sets from `dir`: raw pixels 0..255 as f32,
/// `classes` = largest label in either set + 1, `image` = (1, rows, cols).
pub fn load_mnist(dir: impl AsRef<Path>) -> Result<(Dataset, Dataset)> {
    let (train, test) = load_mnist_u8(dir)?;
    let classes = train
        .labels
        .iter()
        .chain(&test.labels)
        .max()
        .map_or(0, |&m| m as usize + 1);
    Ok((train.to_dataset(classes), test.to_dataset(classes)))
}
