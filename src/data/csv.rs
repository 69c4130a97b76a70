//! Numeric CSV with a header row: one label column, every other column a feature.
//!
//! Read by the `csv` crate, as a stream (through its buffered reader: a file is never
//! held whole, only the numbers read from it). Fields are separated by any one byte
//! ([`Options::delimiter`], a comma by default); a field in double quotes may hold the
//! delimiter, line breaks and `""` for a quote. Lines end with LF or CRLF; a UTF-8 byte
//! order mark, blank lines and spaces or tabs around a field are skipped.
//!
//! A small filter in front of the reader ([`QuoteTracker`]) follows the quotes to learn
//! the line each record starts on (the reader's own positions count from the end of the
//! previous record, so they are early after a blank line or a CRLF), and to report the
//! two mistakes the reader accepts silently: a quote that is never closed (the rest of
//! the file would become one field) and text after a closing quote.

use super::Dataset;
use crate::error::{Error, Result};
use std::collections::VecDeque;
use std::io::Read;
use std::path::Path;

/// How to read a CSV file: which column is the label, whether it holds classes, and
/// the delimiter.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The label column's name in the header (default: the last column).
    pub label: Option<String>,
    /// `Some(true)` for classification (labels must be non-negative integers; classes
    /// = largest + 1), `Some(false)` for regression, `None` to infer classification when
    /// the labels are non-negative integers that cover every id from 0 to the largest
    /// (so integer regression targets such as 25..346 stay regression).
    pub classes: Option<bool>,
    /// The byte between fields: `b','` (the default), `b';'`, `b'\t'`, ... Not `"`, CR
    /// or LF. [`parse_delimiter`] reads one from text such as `tab`.
    pub delimiter: u8,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            label: None,
            classes: None,
            delimiter: b',',
        }
    }
}

impl Options {
    /// Options with `label` and `classes` as [`load`] and [`parse`] take them, and the
    /// default delimiter.
    pub fn new(label: Option<&str>, classes: Option<bool>) -> Self {
        Options {
            label: label.map(str::to_string),
            classes,
            ..Options::default()
        }
    }

    /// The same options with another delimiter.
    pub fn delimiter(self, delimiter: u8) -> Self {
        Options { delimiter, ..self }
    }
}

/// Reads a delimiter given as text: `tab` (or `\t`, or a tab character), `space`,
/// `comma`, `semicolon`, `pipe`, `0xNN` for any byte, or any one-byte character such
/// as `,` `;` `|`. A double quote, CR and LF are `InvalidArgument` errors, as is text
/// longer than one byte that names none of these.
pub fn parse_delimiter(text: &str) -> Result<u8> {
    let d = match text {
        "tab" | "\\t" => b'\t',
        "space" => b' ',
        "comma" => b',',
        "semicolon" => b';',
        "pipe" => b'|',
        _ => match (text.as_bytes(), text.strip_prefix("0x")) {
            ([b], _) => *b,
            (_, Some(hex)) if hex.len() == 2 => u8::from_str_radix(hex, 16).map_err(|_| {
                Error::arg(
                    "delimiter",
                    format!("'{text}' is not a byte in hex (0x00..0xff)"),
                )
            })?,
            _ => {
                return Err(Error::arg(
                    "delimiter",
                    format!(
                        "'{text}' is not one byte: give a character such as , or ; or |, \
                         tab, space, or a byte as 0xNN"
                    ),
                ))
            }
        },
    };
    check_delimiter(d)?;
    Ok(d)
}

/// The delimiter as [`parse_delimiter`] reads it back: `tab`, `space`, the character
/// itself when it is printable ASCII, else `0xNN`.
pub fn delimiter_name(delimiter: u8) -> String {
    match delimiter {
        b'\t' => "tab".to_string(),
        b' ' => "space".to_string(),
        d if d.is_ascii_graphic() => (d as char).to_string(),
        d => format!("0x{d:02x}"),
    }
}

/// A delimiter in a message: its name, quoted when it is a character.
fn shown(d: u8) -> String {
    match delimiter_name(d) {
        name if name.len() == 1 => format!("'{name}'"),
        name => name,
    }
}

fn check_delimiter(d: u8) -> Result<()> {
    if matches!(d, b'"' | b'\n' | b'\r') {
        return Err(Error::arg(
            "delimiter",
            format!(
                "{} cannot separate fields: it quotes or ends them",
                delimiter_name(d)
            ),
        ));
    }
    Ok(())
}

/// Loads a CSV file with a comma delimiter; see [`Options`] for `label` and `classes`.
pub fn load(path: impl AsRef<Path>, label: Option<&str>, classes: Option<bool>) -> Result<Dataset> {
    load_with(path, &Options::new(label, classes))
}

/// Loads a CSV file as `options` say, reading it as a stream.
///
/// A file that cannot be opened or read is an `Io` error; everything wrong inside it a
/// `Format` error that names the line.
pub fn load_with(path: impl AsRef<Path>, options: &Options) -> Result<Dataset> {
    let path = path.as_ref();
    check_delimiter(options.delimiter)?;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    read_from(file, &path.display().to_string(), options)
}

/// Parses CSV text with a comma delimiter; `what` names it in errors. See [`Options`]
/// for `label` and `classes`.
pub fn parse(
    text: &str,
    what: &str,
    label: Option<&str>,
    classes: Option<bool>,
) -> Result<Dataset> {
    parse_with(text, what, &Options::new(label, classes))
}

/// Parses CSV text as `options` say; `what` names it in errors.
pub fn parse_with(text: &str, what: &str, options: &Options) -> Result<Dataset> {
    read(text.as_bytes(), what, options)
}

/// Reads CSV from any reader (a file, standard input, a decompressor) as a stream;
/// `what` names it in errors, `Io` ones included.
pub fn read(reader: impl Read, what: &str, options: &Options) -> Result<Dataset> {
    check_delimiter(options.delimiter)?;
    read_from(reader, what, options)
}

fn read_from(reader: impl Read, source: &str, options: &Options) -> Result<Dataset> {
    let what = format!("{source} (CSV)");
    let mut rows = Records {
        reader: csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(options.delimiter)
            .from_reader(QuoteTracker::new(reader, options.delimiter)),
        record: csv::ByteRecord::new(),
        what: &what,
        source,
    };
    let (columns, label_col) = header(&mut rows, options)?;
    let (x, y, label_lines) = data_rows(&mut rows, &columns, label_col)?;
    let n = y.len();
    if n == 0 {
        return Err(Error::format(&what, "header but no data rows"));
    }
    let classes = class_count(&y, options.classes).map_err(|i| {
        let detail = format!(
            "line {}: label {} in column \"{}\" is not a non-negative integer class id",
            label_lines[i], y[i], columns[label_col]
        );
        Error::format(&what, detail)
    })?;
    Ok(Dataset {
        x,
        y,
        n,
        features: columns.len() - 1,
        classes,
        image: None,
    })
}

/// The header's column names and the label's column, checked.
fn header<R: Read>(rows: &mut Records<'_, R>, options: &Options) -> Result<(Vec<String>, usize)> {
    let what = rows.what;
    let header_line = rows
        .next()?
        .ok_or_else(|| Error::format(what, "empty: no header row"))?;
    let columns = (0..rows.record.len())
        .map(|j| rows.text(j, header_line).map(str::to_string))
        .collect::<Result<Vec<String>>>()?;
    let hint = || delimiter_hint(&columns, options.delimiter);
    let label_col = match options.label.as_deref() {
        None => columns.len().saturating_sub(1),
        Some(name) => {
            let hits: Vec<usize> = (0..columns.len()).filter(|&j| columns[j] == name).collect();
            match hits.as_slice() {
                [j] => *j,
                [] => {
                    let detail = format!(
                        "no label column \"{name}\"; the columns are: {}{}",
                        columns.join(", "),
                        hint()
                    );
                    return Err(Error::format(what, detail));
                }
                _ => {
                    let detail = format!("label column \"{name}\" appears {} times", hits.len());
                    return Err(Error::format(what, detail));
                }
            }
        }
    };
    if columns.len() < 2 {
        let detail = format!(
            "header has {} column(s); need at least one feature besides the label{}",
            columns.len(),
            hint()
        );
        return Err(Error::format(what, detail));
    }
    Ok((columns, label_col))
}

/// The data rows: features, labels and each label's line.
fn data_rows<R: Read>(
    rows: &mut Records<'_, R>,
    columns: &[String],
    label_col: usize,
) -> Result<(Vec<f32>, Vec<f32>, Vec<usize>)> {
    let what = rows.what;
    let (mut x, mut y, mut label_lines) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(line_no) = rows.next()? {
        if rows.record.len() != columns.len() {
            let detail = format!(
                "line {line_no} has {} fields, expected {} as in the header",
                rows.record.len(),
                columns.len()
            );
            return Err(Error::format(what, detail));
        }
        for (j, column) in columns.iter().enumerate() {
            let field = rows.text(j, line_no)?;
            let v = number(field).ok_or_else(|| {
                Error::format(
                    what,
                    format!(
                        "line {line_no}, column \"{column}\" (column {}): \"{field}\" is not a finite number",
                        j + 1
                    ),
                )
            })?;
            if j == label_col {
                y.push(v);
            } else {
                x.push(v);
            }
        }
        label_lines.push(line_no);
    }
    Ok((x, y, label_lines))
}

/// The number of classes the labels hold (0: a regression), as `classes` asks; the index
/// of a label that is no class id where classes are demanded.
fn class_count(y: &[f32], classes: Option<bool>) -> std::result::Result<usize, usize> {
    let is_class_id = |v: f32| v >= 0.0 && v.fract() == 0.0 && v < 16_777_216.0;
    match classes {
        Some(false) => Ok(0),
        Some(true) => match y.iter().position(|&v| !is_class_id(v)) {
            Some(i) => Err(i),
            None => Ok(max_label(y) + 1),
        },
        // Class ids that cover 0..k are classes; anything else is a regression target.
        None if y.iter().all(|&v| is_class_id(v)) => {
            let k = max_label(y) + 1;
            let mut seen = vec![false; k];
            for &v in y {
                seen[v as usize] = true;
            }
            Ok(if seen.iter().all(|&s| s) { k } else { 0 })
        }
        None => Ok(0),
    }
}

/// For a header of one column that holds another common delimiter: a hint to use it.
fn delimiter_hint(columns: &[String], delimiter: u8) -> String {
    let [only] = columns else {
        return String::new();
    };
    [b',', b';', b'\t', b'|']
        .into_iter()
        .find(|&d| d != delimiter && only.as_bytes().contains(&d))
        .map_or(String::new(), |d| {
            format!(
                " (read with delimiter {}; the header holds {}: is that the delimiter?)",
                shown(delimiter),
                shown(d)
            )
        })
}

fn max_label(y: &[f32]) -> usize {
    y.iter().fold(0f32, |m, &v| m.max(v)) as usize
}

fn number(field: &str) -> Option<f32> {
    field.parse::<f32>().ok().filter(|v| v.is_finite())
}

/// The records of one CSV stream, each with the line it starts on.
struct Records<'a, R> {
    reader: csv::Reader<QuoteTracker<R>>,
    /// The record last read.
    record: csv::ByteRecord,
    /// The input with its format, for `Format` errors.
    what: &'a str,
    /// The input, for `Io` errors.
    source: &'a str,
}

impl<R: Read> Records<'_, R> {
    /// Reads the next record into `self.record`; its line, or `None` at the end.
    fn next(&mut self) -> Result<Option<usize>> {
        match self.reader.read_byte_record(&mut self.record) {
            Ok(false) => Ok(None),
            Ok(true) => match self.reader.get_mut().records.pop_front() {
                Some(Record {
                    problem: Some(problem),
                    ..
                }) => Err(Error::format(self.what, problem)),
                Some(Record { line, .. }) => Ok(Some(line)),
                // The tracker sees every record before the reader does; should it ever
                // disagree, the reader's position (early after blank lines) still helps.
                None => Ok(Some(
                    self.record.position().map_or(0, |p| p.line() as usize),
                )),
            },
            Err(e) => {
                let detail = e.to_string();
                Err(match e.into_kind() {
                    csv::ErrorKind::Io(e) => Error::io(self.source, e),
                    _ => Error::format(self.what, detail),
                })
            }
        }
    }

    /// Field `j` of the record last read, trimmed; `line` names it in errors.
    fn text(&self, j: usize, line: usize) -> Result<&str> {
        let raw = self.record.get(j).unwrap_or_default();
        std::str::from_utf8(raw).map(str::trim).map_err(|_| {
            Error::format(
                self.what,
                format!("line {line}, field {}: not valid UTF-8", j + 1),
            )
        })
    }
}

/// What [`QuoteTracker`] learned of one record.
#[derive(Debug)]
struct Record {
    /// The line (from 1) of its first byte.
    line: usize,
    /// Quoting the CSV reader accepts but kiln refuses, with its line.
    problem: Option<String>,
}

/// Where [`QuoteTracker`] is within the CSV syntax (as `csv_core`'s reader states).
#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Between records, skipping blank lines.
    RecordStart,
    /// At the start of a field, skipping spaces and tabs.
    FieldStart,
    /// In a field without quotes.
    Bare,
    /// In a quoted field.
    Quoted,
    /// Just after a quote in a quoted field: it closes the field, or a second one
    /// follows for a literal quote.
    QuoteInQuoted,
    /// After a closing quote and some spaces or tabs.
    AfterQuote,
}

const BOM: [u8; 3] = [0xef, 0xbb, 0xbf];

/// A reader between the file and the CSV reader. It passes the bytes on except a
/// leading byte order mark and the spaces and tabs that start a field (so ` "a, b"` is
/// quoted, and a line of blanks is blank), and follows the quoting, as the CSV reader
/// will, to record each record's line and any quoting mistake in `records`.
struct QuoteTracker<R> {
    inner: R,
    delimiter: u8,
    /// Bytes read from `inner`, and those of them passed on but not yet given out.
    input: Vec<u8>,
    output: Vec<u8>,
    given: usize,
    /// How many bytes of a byte order mark were matched at the start; 3 once decided.
    bom: usize,
    state: State,
    /// The line of the byte being read (from 1).
    line: usize,
    /// The field being read (from 1) and the line its opening quote is on.
    field: usize,
    quote_line: usize,
    /// Records seen here but not yet taken by the CSV reader, oldest first.
    records: VecDeque<Record>,
    done: bool,
}

impl<R: Read> QuoteTracker<R> {
    fn new(inner: R, delimiter: u8) -> Self {
        QuoteTracker {
            inner,
            delimiter,
            input: vec![0; 64 * 1024],
            output: Vec::new(),
            given: 0,
            bom: 0,
            state: State::RecordStart,
            line: 1,
            field: 0,
            quote_line: 0,
            records: VecDeque::new(),
            done: false,
        }
    }

    /// Notes the first mistake of the record being read.
    fn problem(&mut self, detail: String) {
        if let Some(r) = self.records.back_mut() {
            r.problem.get_or_insert(detail);
        }
    }

    /// Follows one byte; passes it on unless it is a blank that starts a field.
    fn byte(&mut self, b: u8) {
        use State::*;
        let blank = (b == b' ' || b == b'\t') && b != self.delimiter;
        let end = b == b'\n' || b == b'\r';
        if blank && matches!(self.state, RecordStart | FieldStart) {
            return;
        }
        match self.state {
            RecordStart if !end => {
                self.records.push_back(Record {
                    line: self.line,
                    problem: None,
                });
                self.field = 1;
                self.state = FieldStart;
                self.in_field(b, end);
            }
            RecordStart => {}
            FieldStart | Bare => self.in_field(b, end),
            Quoted => {
                if b == b'"' {
                    self.state = QuoteInQuoted;
                }
            }
            QuoteInQuoted | AfterQuote => {
                if b == b'"' && self.state == QuoteInQuoted {
                    self.state = Quoted;
                } else if b == self.delimiter || end {
                    self.in_field(b, end);
                } else if blank {
                    self.state = AfterQuote;
                } else {
                    let what = if b.is_ascii_graphic() {
                        format!("'{}'", b as char)
                    } else {
                        format!("byte 0x{b:02x}")
                    };
                    // A file read with the wrong delimiter often ends here first.
                    let hint = if b",;\t|".contains(&b) {
                        format!(
                            " (read with delimiter {}; is {} the delimiter?)",
                            shown(self.delimiter),
                            shown(b)
                        )
                    } else {
                        String::new()
                    };
                    let detail = format!(
                        "line {}: {what} after the closing quote of field {}{hint}",
                        self.line, self.field
                    );
                    self.problem(detail);
                    self.state = Bare;
                }
            }
        }
        if b == b'\n' {
            self.line += 1;
        }
        self.output.push(b);
    }

    /// A byte at the start of a field or in a field without quotes.
    fn in_field(&mut self, b: u8, end: bool) {
        if b == self.delimiter {
            self.field += 1;
            self.state = State::FieldStart;
        } else if end {
            self.state = State::RecordStart;
        } else if b == b'"' && self.state == State::FieldStart {
            self.quote_line = self.line;
            self.state = State::Quoted;
        } else {
            self.state = State::Bare;
        }
    }

    /// Follows a chunk of input, first taking off a byte order mark.
    fn chunk(&mut self, n: usize) {
        let mut input = std::mem::take(&mut self.input);
        for &b in input.iter().take(n) {
            if self.bom < BOM.len() {
                if b == BOM[self.bom] {
                    self.bom += 1;
                    continue;
                }
                self.not_bom();
            }
            self.byte(b);
        }
        std::mem::swap(&mut self.input, &mut input);
    }

    /// The bytes taken for a byte order mark were not one: follows them as text.
    fn not_bom(&mut self) {
        let matched = self.bom;
        self.bom = BOM.len();
        for &b in &BOM[..matched] {
            self.byte(b);
        }
    }

    /// The end of the input: a quote still open is a mistake of the last record.
    fn finish(&mut self) {
        if self.bom < BOM.len() {
            self.not_bom();
        }
        if self.state == State::Quoted {
            let detail = format!(
                "line {}: unclosed quote in field {}",
                self.quote_line, self.field
            );
            self.problem(detail);
        }
        self.done = true;
    }
}

impl<R: Read> Read for QuoteTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.given == self.output.len() && !self.done {
            self.output.clear();
            self.given = 0;
            match self.inner.read(&mut self.input) {
                Ok(0) => self.finish(),
                Ok(n) => self.chunk(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let pending = self.output.get(self.given..).unwrap_or_default();
        let n = pending.len().min(buf.len());
        buf[..n].copy_from_slice(&pending[..n]);
        self.given += n;
        Ok(n)
    }
}
