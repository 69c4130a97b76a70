//! Host-side data: IDX and CSV loading, the embedded digits set, split, scaling, validation.

mod common;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use kiln::data::{csv, digits, idx, Dataset, Scaler, Scaling};
use kiln::Error;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// Records the largest single allocation per thread, so a test can prove that a
// header's claimed size was never allocated (tests run on parallel threads).
struct Tracking;

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = PEAK.try_with(|p| {
        if size > p.get() {
            p.set(size)
        }
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// A fresh, empty directory private to one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn images_file(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(pixels);
    v
}

fn labels_file(labels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    v.extend_from_slice(labels);
    v
}

/// The format error's text, or a panic naming what came instead.
fn format_err<T: std::fmt::Debug>(r: kiln::Result<T>) -> (String, String) {
    match r {
        Err(Error::Format { what, detail }) => (what, detail),
        other => panic!("expected Error::Format, got {other:?}"),
    }
}

fn shared(name: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(name);
    if dir.is_dir() {
        Some(dir)
    } else {
        let why = format!(
            "{} is absent (the data sets ship beside the project)",
            dir.display()
        );
        common::cannot_run(name, &why);
        None
    }
}

fn counts(labels: impl IntoIterator<Item = usize>, k: usize) -> Vec<usize> {
    let mut c = vec![0; k];
    for l in labels {
        c[l] += 1;
    }
    c
}

/// Loads a real IDX pair directory and checks it against bytes decoded here independently.
fn check_real_idx(dir: &Path, train_counts: &[usize], test_counts: &[usize]) {
    let (train, test) = idx::load_mnist(dir).unwrap();
    for (ds, n, stem, want) in [
        (&train, 60000, "train", train_counts),
        (&test, 10000, "t10k", test_counts),
    ] {
        assert_eq!(ds.n, n);
        assert_eq!(ds.features, 784);
        assert_eq!(ds.classes, 10);
        assert_eq!(ds.image, Some((1, 28, 28)));
        assert_eq!(ds.x.len(), n * 784);
        ds.validate().unwrap();

        let raw = gunzip(&dir.join(format!("{stem}-labels-idx1-ubyte.gz")));
        assert_eq!(&raw[..4], &[0, 0, 8, 1]);
        assert_eq!(u32::from_be_bytes(raw[4..8].try_into().unwrap()), n as u32);
        let independent = counts(raw[8..].iter().map(|&b| b as usize), 10);
        assert_eq!(independent, want, "{stem}: counts from the raw bytes");
        let loaded = counts(ds.y.iter().map(|&v| v as usize), 10);
        assert_eq!(loaded, want, "{stem}: counts from the loaded set");
        assert!(ds.y.iter().all(|&v| v < 10.0));

        let raw = gunzip(&dir.join(format!("{stem}-images-idx3-ubyte.gz")));
        assert_eq!(&raw[..4], &[0, 0, 8, 3]);
        assert_eq!(raw.len(), 16 + n * 784);
        assert!(
            ds.x.iter().zip(&raw[16..]).all(|(&a, &b)| a == b as f32),
            "{stem}: pixels differ from the raw bytes"
        );
        assert!(ds.x.contains(&255.0));
    }
}

#[test]
fn mnist_loads_with_known_label_counts() {
    let Some(dir) = shared("mnist") else { return };
    check_real_idx(
        &dir,
        &[5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        &[980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    );
}

#[test]
fn fashion_mnist_loads_with_balanced_classes() {
    let Some(dir) = shared("fashion-mnist") else {
        return;
    };
    check_real_idx(&dir, &[6000; 10], &[1000; 10]);
}

#[test]
fn idx_raw_and_gz_both_load_detected_by_magic() {
    let dir = temp_dir("mixed");
    let train_px: Vec<u8> = (0..3 * 2 * 3).map(|i| i as u8 * 10).collect();
    let test_px: Vec<u8> = (0..2 * 2 * 3).map(|i| 250 - i as u8).collect();
    // Raw bytes in a file named .gz and gzip in a file without: names must not matter.
    std::fs::write(
        dir.join("train-images-idx3-ubyte.gz"),
        images_file(3, 2, 3, &train_px),
    )
    .unwrap();
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        gz(&labels_file(&[0, 4, 2])),
    )
    .unwrap();
    std::fs::write(
        dir.join("t10k-images-idx3-ubyte.gz"),
        gz(&images_file(2, 2, 3, &test_px)),
    )
    .unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), labels_file(&[1, 3])).unwrap();

    let (train, test) = idx::load_mnist(&dir).unwrap();
    assert_eq!((train.n, train.features, train.classes), (3, 6, 5));
    assert_eq!((test.n, test.features, test.classes), (2, 6, 5));
    assert_eq!(train.image, Some((1, 2, 3)));
    assert_eq!(
        train.x,
        train_px.iter().map(|&p| p as f32).collect::<Vec<_>>()
    );
    assert_eq!(
        test.x,
        test_px.iter().map(|&p| p as f32).collect::<Vec<_>>()
    );
    assert_eq!(train.y, vec![0.0, 4.0, 2.0]);
    assert_eq!(test.y, vec![1.0, 3.0]);

    let (px, n, rows, cols) = idx::read_images(dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
    assert_eq!((n, rows, cols), (2, 2, 3));
    assert_eq!(px, test_px);
    let (u8_train, _) = idx::load_mnist_u8(&dir).unwrap();
    assert_eq!(u8_train.labels, vec![0, 4, 2]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn idx_dotted_file_names_are_accepted() {
    let dir = temp_dir("dotted");
    std::fs::write(
        dir.join("train-images.idx3-ubyte"),
        images_file(1, 1, 2, &[7, 8]),
    )
    .unwrap();
    std::fs::write(dir.join("train-labels.idx1-ubyte"), labels_file(&[1])).unwrap();
    std::fs::write(
        dir.join("t10k-images.idx3-ubyte"),
        images_file(1, 1, 2, &[9, 9]),
    )
    .unwrap();
    std::fs::write(dir.join("t10k-labels.idx1-ubyte"), labels_file(&[0])).unwrap();
    let (train, test) = idx::load_mnist(&dir).unwrap();
    assert_eq!(train.x, vec![7.0, 8.0]);
    assert_eq!(test.y, vec![0.0]);
    assert_eq!(train.classes, 2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn idx_missing_file_is_an_io_error() {
    let dir = temp_dir("missing");
    match idx::load_mnist(&dir) {
        Err(Error::Io { path, source }) => {
            assert!(path.contains("train-images-idx3-ubyte"), "{path}");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn idx_truncated_files_are_rejected() {
    let dir = temp_dir("truncated");
    let mut short = images_file(2, 2, 2, &[1; 8]);
    short.truncate(short.len() - 3);
    for (name, bytes) in [("img", short.clone()), ("img.gz", gz(&short))] {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let (what, detail) = format_err(idx::read_images(&p));
        assert!(what.contains(name), "{what}");
        assert!(detail.contains("truncated"), "{detail}");
        assert!(detail.contains("8 data bytes"), "{detail}");
        assert!(detail.contains("only 5"), "{detail}");
    }
    // Cut inside the header, and cut inside the magic.
    let p = dir.join("header");
    std::fs::write(&p, &images_file(2, 2, 2, &[])[..10]).unwrap();
    let (_, detail) = format_err(idx::read_images(&p));
    assert!(detail.contains("truncated header"), "{detail}");
    std::fs::write(&p, [0u8, 0]).unwrap();
    let (_, detail) = format_err(idx::read_labels(&p));
    assert!(detail.contains("truncated"), "{detail}");
    // A gzip stream cut short is a format error too, not a silent short read.
    let full = gz(&labels_file(&[1; 1000]));
    std::fs::write(&p, &full[..full.len() / 2]).unwrap();
    format_err(idx::read_labels(&p));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn idx_trailing_data_is_rejected() {
    let dir = temp_dir("trailing");
    let p = dir.join("labels");
    let mut bytes = labels_file(&[1, 2, 3]);
    bytes.push(9);
    std::fs::write(&p, bytes).unwrap();
    let (_, detail) = format_err(idx::read_labels(&p));
    assert!(detail.contains("trailing"), "{detail}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn idx_wrong_magic_is_rejected() {
    let dir = temp_dir("magic");
    let p = dir.join("labels-as-images");
    // A label file where images are expected.
    std::fs::write(&p, labels_file(&[1, 2])).unwrap();
    let (what, detail) = format_err(idx::read_images(&p));
    assert!(what.contains("labels-as-images"), "{what}");
    assert!(detail.contains("0x00000803"), "{detail}");
    // Not IDX at all, and an IDX file of floats (type 0x0d).
    std::fs::write(&p, b"PK\x03\x04 not idx at all").unwrap();
    let (_, detail) = format_err(idx::read_labels(&p));
    assert!(detail.contains("wrong magic"), "{detail}");
    assert!(detail.contains("0x00000801"), "{detail}");
    std::fs::write(&p, [0, 0, 0x0d, 1, 0, 0, 0, 0]).unwrap();
    let (_, detail) = format_err(idx::read_labels(&p));
    assert!(detail.contains("wrong magic"), "{detail}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn idx_wrong_dimension_count_is_rejected() {
    let dir = temp_dir("dims");
    let p = dir.join("images2d");
    let mut bytes = vec![0, 0, 8, 2];
    bytes.extend_from_slice(&2u32.to_be_bytes());
    bytes.extend_from_slice(&3u32.to_be_bytes());
    bytes.extend_from_slice(&[0; 6]);
    std::fs::write(&p, gz(&bytes)).unwrap();
    let (what, detail) = format_err(idx::read_images(&p));
    assert!(what.contains("images2d"), "{what}");
    assert!(detail.contains("2 dimension(s), expected 3"), "{detail}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn idx_image_label_count_mismatch_is_rejected() {
    let dir = temp_dir("count");
    let imgs = dir.join("imgs");
    let labels = dir.join("labels");
    std::fs::write(&imgs, images_file(3, 1, 1, &[1, 2, 3])).unwrap();
    std::fs::write(&labels, labels_file(&[0, 1])).unwrap();
    let (what, detail) = format_err(idx::load_pair(&imgs, &labels));
    assert!(what.contains("labels"), "{what}");
    assert!(detail.contains("2 labels, expected 3"), "{detail}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn idx_oversized_header_errors_fast_without_allocating() {
    let dir = temp_dir("oversized");
    // Claims 2^31 images of 28x28 (about 1.7 TB) in a 100-byte file.
    let mut bytes = images_file(1 << 31, 28, 28, &[]);
    bytes.resize(100, 7);
    let raw = dir.join("huge");
    std::fs::write(&raw, &bytes).unwrap();
    let packed = dir.join("huge-packed");
    std::fs::write(&packed, gz(&bytes)).unwrap();
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&(1u32 << 31).to_be_bytes());
    labels.resize(100, 1);
    let lab = dir.join("huge-labels");
    std::fs::write(&lab, &labels).unwrap();

    for p in [&raw, &packed] {
        PEAK.with(|c| c.set(0));
        let start = Instant::now();
        let (_, detail) = format_err(idx::read_images(p));
        let took = start.elapsed();
        let peak = PEAK.with(|c| c.get());
        assert!(detail.contains("truncated"), "{detail}");
        assert!(detail.contains("only 84"), "{detail}");
        assert!(peak < 1 << 20, "largest allocation was {peak} bytes");
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
    PEAK.with(|c| c.set(0));
    format_err(idx::read_labels(&lab));
    assert!(PEAK.with(|c| c.get()) < 1 << 20);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn digits_embedded_loads() {
    let d = digits().unwrap();
    assert_eq!((d.n, d.features, d.classes), (1797, 64, 10));
    assert_eq!(d.x.len(), 1797 * 64);
    assert_eq!(d.image, Some((1, 8, 8)));
    d.validate().unwrap();
    assert_eq!(
        counts(d.y.iter().map(|&v| v as usize), 10),
        [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    );
    assert!(d
        .x
        .iter()
        .all(|&v| (0.0..=16.0).contains(&v) && v.fract() == 0.0));
    assert_eq!(d.x.iter().cloned().fold(0.0, f32::max), 16.0);
    // First row of the file: 0,0,5,13,9,1,0,0,... label 0.
    assert_eq!(&d.x[..8], &[0.0, 0.0, 5.0, 13.0, 9.0, 1.0, 0.0, 0.0]);
    assert_eq!(d.y[0], 0.0);

    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits/digits.csv");
    let f = csv::load(&file, Some("target"), None).unwrap();
    assert_eq!((f.x, f.y, f.classes), (d.x, d.y, 10));
}

#[test]
fn csv_shared_sets_load() {
    if let Some(dir) = shared("iris") {
        let d = csv::load(dir.join("iris.csv"), None, None).unwrap();
        assert_eq!((d.n, d.features, d.classes), (150, 4, 3));
        d.validate().unwrap();
    }
    if let Some(dir) = shared("diabetes") {
        // Integer targets 25..346 are a regression, not 347 classes.
        let d = csv::load(dir.join("diabetes.csv"), None, None).unwrap();
        assert_eq!((d.n, d.features, d.classes), (442, 10, 0));
        d.validate().unwrap();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn csv_label_by_name_and_class_inference() {
    let dir = temp_dir("csv-label");
    let p = write(&dir, "a.csv", "f1,kind,f2\n1.5,1,2\n-3,0,4e1\n0.25,2,5\n");
    let d = csv::load(&p, Some("kind"), None).unwrap();
    assert_eq!((d.n, d.features, d.classes), (3, 2, 3));
    assert_eq!(d.x, vec![1.5, 2.0, -3.0, 40.0, 0.25, 5.0]);
    assert_eq!(d.y, vec![1.0, 0.0, 2.0]);
    assert_eq!(d.image, None);

    // Default label: the last column; its integer values have gaps, so regression.
    let d = csv::load(&p, None, None).unwrap();
    assert_eq!((d.features, d.classes), (2, 0));
    assert_eq!(d.y, vec![2.0, 40.0, 5.0]);
    // Integer labels with gaps are inferred as regression; forcing works both ways.
    let q = write(&dir, "b.csv", "f,y\n1,3\n2,5\n3,3\n");
    assert_eq!(csv::load(&q, None, None).unwrap().classes, 0);
    assert_eq!(csv::load(&q, None, Some(true)).unwrap().classes, 6);
    assert_eq!(csv::load(&p, Some("kind"), Some(false)).unwrap().classes, 0);
    let (_, detail) = format_err(csv::load(&p, Some("f1"), Some(true)));
    assert!(detail.contains("line 2"), "{detail}");
    assert!(detail.contains("\"f1\""), "{detail}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn csv_missing_label_column_lists_columns() {
    let dir = temp_dir("csv-missing");
    let p = write(&dir, "m.csv", "alpha,beta,gamma\n1,2,0\n");
    let (what, detail) = format_err(csv::load(&p, Some("label"), None));
    assert!(what.contains("m.csv"), "{what}");
    assert!(detail.contains("\"label\""), "{detail}");
    assert!(detail.contains("alpha, beta, gamma"), "{detail}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn csv_non_numeric_cell_names_row_and_column() {
    let dir = temp_dir("csv-nan");
    let p = write(&dir, "n.csv", "a,b,y\n1,2,0\n3,oops,1\n");
    let (_, detail) = format_err(csv::load(&p, None, None));
    assert!(detail.contains("line 3"), "{detail}");
    assert!(detail.contains("\"b\""), "{detail}");
    assert!(detail.contains("oops"), "{detail}");
    // Empty cells and non-finite numbers are refused too.
    let p = write(&dir, "e.csv", "a,b,y\n1,,0\n");
    let (_, detail) = format_err(csv::load(&p, None, None));
    assert!(detail.contains("line 2"), "{detail}");
    let p = write(&dir, "i.csv", "a,b,y\n1,2,0\n1,2,0\ninf,2,0\n");
    let (_, detail) = format_err(csv::load(&p, None, None));
    assert!(
        detail.contains("line 4") && detail.contains("\"a\""),
        "{detail}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn csv_ragged_row_is_rejected() {
    let dir = temp_dir("csv-ragged");
    let p = write(&dir, "r.csv", "a,b,y\n1,2,0\n\n3,4\n");
    let (_, detail) = format_err(csv::load(&p, None, None));
    assert!(detail.contains("line 4"), "{detail}");
    assert!(detail.contains("has 2 fields, expected 3"), "{detail}");
    let p = write(&dir, "r2.csv", "a,b,y\n1,2,0,9\n");
    let (_, detail) = format_err(csv::load(&p, None, None));
    assert!(detail.contains("has 4 fields, expected 3"), "{detail}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn csv_empty_file_is_rejected() {
    let dir = temp_dir("csv-empty");
    for text in ["", "\n\r\n  \n"] {
        let p = write(&dir, "empty.csv", text);
        let (what, detail) = format_err(csv::load(&p, None, None));
        assert!(what.contains("empty.csv"), "{what}");
        assert!(detail.contains("empty"), "{detail}");
    }
    let p = write(&dir, "header.csv", "a,b\n");
    let (_, detail) = format_err(csv::load(&p, None, None));
    assert!(detail.contains("no data rows"), "{detail}");
    let p = write(&dir, "label-only.csv", "y\n1\n");
    format_err(csv::load(&p, None, None));
    match csv::load(dir.join("absent.csv"), None, None) {
        Err(Error::Io { path, .. }) => assert!(path.contains("absent.csv")),
        other => panic!("expected Error::Io, got {other:?}"),
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn csv_quoted_header_and_crlf() {
    let text = "\u{feff}\"width, cm\", \"height\" ,\"class\"\r\n1,\"2.5\",1\r\n3,4,0\r\n";
    let d = csv::parse(text, "quoted", Some("class"), None).unwrap();
    assert_eq!((d.n, d.features, d.classes), (2, 2, 2));
    assert_eq!(d.x, vec![1.0, 2.5, 3.0, 4.0]);
    assert_eq!(d.y, vec![1.0, 0.0]);
    let d = csv::parse(text, "quoted", Some("width, cm"), Some(false)).unwrap();
    assert_eq!(d.y, vec![1.0, 3.0]);
    let (_, detail) = format_err(csv::parse("\"a,b\n1\n", "bad", None, None));
    assert!(detail.contains("unclosed quote"), "{detail}");
}

#[test]
fn csv_quoted_fields_hold_delimiters() {
    // Commas and semicolons inside quotes are text, not separators; "" is a quote.
    let text = "\"width, cm\",\"say \"\"hi\"\"; ok\",label\n\"1.5\",2,0\n3,\" 4 \",1\n";
    let d = csv::parse(text, "commas", Some("width, cm"), Some(false)).unwrap();
    assert_eq!((d.n, d.features), (2, 2));
    assert_eq!(d.x, vec![2.0, 0.0, 4.0, 1.0]);
    assert_eq!(d.y, vec![1.5, 3.0]);
    let (_, detail) = format_err(csv::parse(text, "commas", Some("say"), None));
    assert!(
        detail.contains("the columns are: width, cm, say \"hi\"; ok, label"),
        "{detail}"
    );
    // A quoted number with a comma in it is one field, and not a number.
    let (_, detail) = format_err(csv::parse("a,y\n\"1,5\",0\n", "t", None, None));
    assert!(
        detail.contains("line 2") && detail.contains("\"1,5\" is not a finite number"),
        "{detail}"
    );
}

#[test]
fn csv_quoted_newlines_keep_later_line_numbers() {
    // The header spans lines 1-2 and the first row lines 3-5.
    let text = "\"first\ncolumn\",b,y\n1,\"2\n\n\",0\n3,4,1\n5,oops,0\n";
    let d = csv::parse_with(
        &text.replace("oops", "6"),
        "nl",
        &csv::Options::new(Some("first\ncolumn"), None),
    )
    .unwrap();
    assert_eq!(d.y, vec![1.0, 3.0, 5.0]);
    assert_eq!(d.x, vec![2.0, 0.0, 4.0, 1.0, 6.0, 0.0]);
    match csv::parse(text, "nl", None, None) {
        Err(Error::Format { what, detail }) => {
            assert_eq!(what, "nl (CSV)");
            assert!(detail.starts_with("line 7, column \"b\""), "{detail}");
        }
        other => panic!("expected Error::Format, got {other:?}"),
    }
    // Blank lines and CRLF line ends count too; so does a ragged row after them.
    let text = "a,b,y\r\n\"1\r\n\",2,0\r\n\r\n  \r\n3,x,1\r\n";
    let (_, detail) = format_err(csv::parse(text, "crlf", None, None));
    assert!(detail.starts_with("line 6, column \"b\""), "{detail}");
    let (_, detail) = format_err(csv::parse("a,y\n\"1\n\",0\n\n\n2\n", "r", None, None));
    assert_eq!(detail, "line 6 has 1 fields, expected 2 as in the header");
    // A quote left open swallows the rest of the file: named by the line it opens on.
    let (_, detail) = format_err(csv::parse("a,y\n1,0\n2,\"0\n3,1\n", "open", None, None));
    assert_eq!(detail, "line 3: unclosed quote in field 2");
    let (_, detail) = format_err(csv::parse("a,y\n\"1\n\" 2,0\n", "after", None, None));
    assert_eq!(detail, "line 3: '2' after the closing quote of field 1");
}

#[test]
fn csv_tab_and_semicolon_files() {
    let dir = temp_dir("csv-delimiters");
    let comma = csv::parse("a,b,y\n1,2.5,0\n3,4,1\n", "comma", None, None).unwrap();
    for (name, d, text) in [
        ("tab", b'\t', "a\tb\ty\n1\t2.5\t0\n3\t 4 \t1\n"),
        ("semicolon", b';', "a;b;y\r\n1;\"2.5\";0\r\n3 ; 4;1\r\n"),
        ("pipe", b'|', "a|b|y\n1|2.5|0\n\n3|4|1"),
    ] {
        let p = write(&dir, &format!("{name}.csv"), text);
        let options = csv::Options::default().delimiter(d);
        assert_eq!(csv::load_with(&p, &options).unwrap(), comma, "{name}");
        assert_eq!(csv::parse_delimiter(name).unwrap(), d);
        // Read with commas, the header is one column: the error says which delimiter.
        let (what, detail) = format_err(csv::load(&p, None, None));
        assert!(what.contains(&format!("{name}.csv")), "{what}");
        assert!(
            detail.contains("header has 1 column(s)")
                && detail.contains(&format!("the header holds {}", csv::delimiter_name(d))),
            "{detail}"
        );
    }
    // Quoted fields hold the delimiter whatever it is.
    let p = write(&dir, "quoted.tsv", "\"a\tb\"\tlabel\n1\t0\n2\t1\n");
    let d = csv::load_with(&p, &csv::Options::new(Some("label"), None).delimiter(b'\t')).unwrap();
    assert_eq!((d.x, d.classes), (vec![1.0, 2.0], 2));
    let (_, detail) = format_err(csv::load_with(
        &p,
        &csv::Options::new(Some("a"), None).delimiter(b'\t'),
    ));
    assert!(detail.contains("the columns are: a\tb, label"), "{detail}");
    // A semicolon file with a missing value names the line, as a comma file does.
    let p = write(&dir, "gap.csv", "a;b;y\n1;2;0\n3;;1\n");
    let (_, detail) = format_err(csv::load_with(&p, &csv::Options::default().delimiter(b';')));
    assert!(detail.starts_with("line 3, column \"b\""), "{detail}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn csv_delimiter_names() {
    for (text, d) in [
        (",", b','),
        (";", b';'),
        ("tab", b'\t'),
        ("\\t", b'\t'),
        ("\t", b'\t'),
        ("space", b' '),
        ("|", b'|'),
        ("0x1f", 0x1f),
        ("0xFF", 0xff),
    ] {
        assert_eq!(csv::parse_delimiter(text).unwrap(), d, "{text:?}");
        assert_eq!(csv::parse_delimiter(&csv::delimiter_name(d)).unwrap(), d);
    }
    for bad in ["\"", "\n", "0x0d", "", ";;", "é", "0xzz"] {
        match csv::parse_delimiter(bad) {
            Err(Error::InvalidArgument { name, .. }) => assert_eq!(name, "delimiter"),
            other => panic!("{bad:?}: expected InvalidArgument, got {other:?}"),
        }
    }
    // The library refuses them too, before reading anything.
    let quote = csv::Options::default().delimiter(b'"');
    assert!(matches!(
        csv::parse_with("a\"y\n1\"0\n", "q", &quote),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        csv::load_with("/no/such/file.csv", &quote),
        Err(Error::InvalidArgument { .. })
    ));
}

/// Hands out its bytes a few at a time, then fails if told to.
struct Trickle<'a> {
    bytes: &'a [u8],
    step: usize,
    fail: bool,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.bytes.is_empty() && self.fail {
            return Err(std::io::Error::other("the disk went away"));
        }
        let n = self.step.min(buf.len()).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

#[test]
fn csv_streams_from_any_reader() {
    // A byte order mark and quotes split across reads; a larger file in small reads.
    let text = "\u{feff}\"a\",\"b\nc\",y\n1,\"2\",0\n\n3,4,1\n";
    let whole = csv::parse(text, "whole", None, None).unwrap();
    let mut big = String::from("f0,f1,f2,y\n");
    for i in 0..20_000 {
        big += &format!("{i},\"{}\",{}.5,{}\n", i * 2, i % 7, i % 3);
    }
    let big_whole = csv::parse(&big, "big", None, None).unwrap();
    assert_eq!((big_whole.n, big_whole.classes), (20_000, 3));
    for step in [1, 2, 3, 7, 4096] {
        let r = Trickle {
            bytes: text.as_bytes(),
            step,
            fail: false,
        };
        let d = csv::read(r, "trickle", &csv::Options::default()).unwrap();
        assert_eq!(d, whole, "step {step}");
        let r = Trickle {
            bytes: big.as_bytes(),
            step: step * 13,
            fail: false,
        };
        assert_eq!(
            csv::read(r, "big", &csv::Options::default()).unwrap(),
            big_whole
        );
        // Errors keep their lines whatever the reads.
        let r = Trickle {
            bytes: b"a,y\n\"1\n\n\",0\n2,x\n",
            step,
            fail: false,
        };
        let (_, detail) = format_err(csv::read(r, "t", &csv::Options::default()));
        assert!(detail.starts_with("line 5, column \"y\""), "{detail}");
    }
    // A read that fails is an Io error naming the input.
    let r = Trickle {
        bytes: b"a,y\n1,0\n",
        step: 3,
        fail: true,
    };
    match csv::read(r, "flaky.csv", &csv::Options::default()) {
        Err(Error::Io { path, source }) => {
            assert_eq!(path, "flaky.csv");
            assert!(source.to_string().contains("went away"));
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
    // Bytes that are not UTF-8 are a Format error with the line and field.
    let r: &[u8] = b"a,y\n1,0\n2,\xff\n";
    let (_, detail) = format_err(csv::read(r, "bin", &csv::Options::default()));
    assert_eq!(detail, "line 3, field 2: not valid UTF-8");
}

fn numbered(n: usize, features: usize) -> Dataset {
    Dataset {
        x: (0..n * features).map(|i| i as f32).collect(),
        y: (0..n).map(|i| i as f32).collect(),
        n,
        features,
        classes: 0,
        image: None,
    }
}

#[test]
fn split_sizes_disjointness_and_determinism() {
    let d = numbered(101, 3);
    let (a, b) = d.split(0.2, 42).unwrap();
    assert_eq!((a.n, b.n), (81, 20));
    assert_eq!((a.x.len(), b.x.len()), (81 * 3, 20 * 3));
    // Rows stay whole: row i holds 3i, 3i+1, 3i+2 with target i.
    for s in [&a, &b] {
        for (r, &t) in s.y.iter().enumerate() {
            let i = t as usize * 3;
            assert_eq!(
                &s.x[r * 3..r * 3 + 3],
                &[i as f32, i as f32 + 1.0, i as f32 + 2.0]
            );
        }
    }
    let mut all: Vec<usize> = a.y.iter().chain(&b.y).map(|&v| v as usize).collect();
    all.sort();
    assert_eq!(all, (0..101).collect::<Vec<_>>());
    assert_ne!(
        a.y,
        (0..81).map(|i| i as f32).collect::<Vec<_>>(),
        "not shuffled"
    );

    let (a2, b2) = d.split(0.2, 42).unwrap();
    assert_eq!((&a.y, &b.y), (&a2.y, &b2.y));
    let (a3, _) = d.split(0.2, 43).unwrap();
    assert_ne!(a.y, a3.y);

    assert_eq!(d.split(0.0, 1).unwrap().1.n, 0);
    assert_eq!(d.split(1.0, 1).unwrap().0.n, 0);
    let g = digits().unwrap();
    let (tr, te) = g.split(0.25, 7).unwrap();
    assert_eq!((tr.n, te.n), (1348, 449));
    assert_eq!((tr.classes, te.image), (10, Some((1, 8, 8))));
}

#[test]
fn split_rejects_fraction_outside_unit_range() {
    for f in [1.5, -0.1, f32::NAN] {
        match numbered(4, 1).split(f, 0) {
            Err(Error::InvalidArgument { name, detail }) => {
                assert!(
                    name.contains("fraction") && detail.contains("[0, 1]"),
                    "{name}: {detail}"
                )
            }
            other => panic!("split({f}): expected InvalidArgument, got {other:?}"),
        }
    }
}

fn column_stats(d: &Dataset, j: usize) -> (f64, f64, f32, f32) {
    let col: Vec<f64> = (0..d.n).map(|i| d.x[i * d.features + j] as f64).collect();
    let mean = col.iter().sum::<f64>() / d.n as f64;
    let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d.n as f64;
    let lo = col.iter().cloned().fold(f64::INFINITY, f64::min) as f32;
    let hi = col.iter().cloned().fold(f64::NEG_INFINITY, f64::max) as f32;
    (mean, var.sqrt(), lo, hi)
}

#[test]
fn standardize_gives_zero_mean_unit_std_and_keeps_constant_columns_finite() {
    let (mut train, mut test) = digits().unwrap().split(0.3, 3).unwrap();
    let before: Vec<_> = (0..64).map(|j| column_stats(&train, j)).collect();
    let original_test = test.clone();
    let s = train.scale(Scaling::Standardize).unwrap();
    assert!(train.x.iter().all(|v| v.is_finite()));
    let mut constant = 0;
    for (j, b) in before.iter().enumerate() {
        let (mean, std, _, _) = column_stats(&train, j);
        assert!(mean.abs() < 1e-5, "feature {j}: mean {mean}");
        if b.1 == 0.0 {
            constant += 1;
            assert_eq!(std, 0.0);
            assert_eq!(s.divisor[j], 1.0);
        } else {
            assert!((std - 1.0).abs() < 1e-4, "feature {j}: std {std}");
            assert!((s.divisor[j] as f64 - b.1).abs() < 1e-4);
        }
        assert!((s.shift[j] as f64 - b.0).abs() < 1e-4);
    }
    assert!(constant > 0, "digits has all-zero pixel columns");

    // Fitted on train, applied to test: the train statistics, not the test's.
    s.apply(&mut test).unwrap();
    for (i, (&t, &o)) in test.x.iter().zip(&original_test.x).enumerate() {
        let j = i % 64;
        assert!((t - (o - s.shift[j]) / s.divisor[j]).abs() < 1e-6);
    }
    let mut wrong = numbered(2, 3);
    assert!(matches!(s.apply(&mut wrong), Err(Error::Shape { .. })));
}

#[test]
fn minmax_maps_onto_unit_range() {
    let mut d = Dataset {
        x: vec![1.0, 5.0, -2.0, 3.0, 5.0, 2.0, 5.0, 5.0, 6.0],
        y: vec![0.0, 1.0, 0.0],
        n: 3,
        features: 3,
        classes: 2,
        image: None,
    };
    let s = d.scale(Scaling::MinMax).unwrap();
    assert_eq!(s.shift, vec![1.0, 5.0, -2.0]);
    assert_eq!(s.divisor, vec![4.0, 1.0, 8.0]);
    assert_eq!(d.x, vec![0.0, 0.0, 0.0, 0.5, 0.0, 0.5, 1.0, 0.0, 1.0]);
}

#[test]
fn divide_scales_and_rejects_zero() {
    let mut d = numbered(2, 2);
    let s = d.scale(Scaling::Divide(255.0)).unwrap();
    assert_eq!(d.x, vec![0.0, 1.0 / 255.0, 2.0 / 255.0, 3.0 / 255.0]);
    assert_eq!(s.divisor, vec![255.0; 2]);
    assert!(matches!(
        Scaler::fit(&d, Scaling::Divide(0.0)),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        Scaler::fit(&d, Scaling::Divide(f32::NAN)),
        Err(Error::InvalidArgument { .. })
    ));
    let before = d.x.clone();
    assert!(matches!(
        d.scale(Scaling::Divide(0.0)),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(d.x, before, "a failed scale leaves the set unchanged");
}

#[test]
fn one_hot_and_batch() {
    let mut d = numbered(4, 2);
    d.y = vec![2.0, 0.0, 1.0, 2.0];
    d.classes = 3;
    assert_eq!(
        d.one_hot().unwrap(),
        vec![0., 0., 1., 1., 0., 0., 0., 1., 0., 0., 0., 1.]
    );
    let (x, y) = d.batch(&[3, 1, 3]).unwrap();
    assert_eq!(x, vec![6.0, 7.0, 2.0, 3.0, 6.0, 7.0]);
    assert_eq!(y, vec![2.0, 0.0, 2.0]);
    let s = d.select(&[2]).unwrap();
    assert_eq!(
        (s.n, s.x, s.y, s.classes),
        (1, vec![4.0, 5.0], vec![1.0], 3)
    );
}

fn invalid(d: &Dataset) -> String {
    match d.validate() {
        Err(Error::InvalidArgument { detail, .. }) => detail,
        other => panic!("expected Error::InvalidArgument, got {other:?}"),
    }
}

#[test]
fn validate_reports_the_offending_row() {
    let mut d = numbered(5, 3);
    d.classes = 5;
    d.validate().unwrap();

    assert!(invalid(&numbered(0, 3)).contains("empty"));

    let mut nan = d.clone();
    nan.x[3 * 3 + 1] = f32::NAN;
    let msg = invalid(&nan);
    assert!(
        msg.contains("row 3") && msg.contains("feature 1") && msg.contains("NaN"),
        "{msg}"
    );
    let mut inf = d.clone();
    inf.x[2 * 3] = f32::NEG_INFINITY;
    assert!(invalid(&inf).contains("row 2"));

    let mut big = d.clone();
    big.y[4] = 5.0;
    let msg = invalid(&big);
    assert!(msg.contains("row 4") && msg.contains("label 5"), "{msg}");
    let mut frac = d.clone();
    frac.y[1] = 0.5;
    assert!(invalid(&frac).contains("row 1"));
    let mut neg = d.clone();
    neg.y[0] = -1.0;
    assert!(invalid(&neg).contains("row 0"));

    let mut reg = d.clone();
    reg.classes = 0;
    reg.y[2] = 1234.5;
    reg.validate().unwrap();
    reg.y[2] = f32::NAN;
    assert!(invalid(&reg).contains("row 2"));

    let mut short = d.clone();
    short.x.pop();
    assert!(matches!(short.validate(), Err(Error::Shape { .. })));
    let mut img = d.clone();
    img.image = Some((1, 2, 2));
    assert!(matches!(img.validate(), Err(Error::Shape { .. })));
}
