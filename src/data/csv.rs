//! Numeric CSV with a header row: one label column, every other column a feature.
//!
//! Hand-written because the format needed is small: comma-separated numbers,
//! optional double quotes around a field (`""` inside for a quote), LF or CRLF.

use super::Dataset;
use crate::error::{Error, Result};
use std::path::Path;

/// Loads a CSV file; see [`parse`] for `label` and `classes`.
pub fn load(path: impl AsRef<Path>, label: Option<&str>, classes: Option<bool>) -> Result<Dataset> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(&text, &path.display().to_string(), label, classes)
}

/// Parses CSV text; `what` names it in errors.
///
/// `label` names the target column (default: the last). `classes`: `Some(true)` for
/// classification (labels must be non-negative integers; classes = largest + 1),
/// `Some(false)` for regression, `None` to infer classification when the labels are
/// non-negative integers that cover every id from 0 to the largest (so integer
/// regression targets such as 25..346 stay regression).
pub fn parse(
    text: &str,
    what: &str,
    label: Option<&str>,
    classes: Option<bool>,
) -> Result<Dataset> {
    let what = format!("{what} (CSV)");
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty());

    let (header_line, header) = lines
        .next()
        .ok_or_else(|| Error::format(&what, "empty: no header row"))?;
    let columns = split_fields(header, header_line, &what)?;
    let label_col = match label {
        None => columns.len() - 1,
        Some(name) => {
            let hits: Vec<usize> = (0..columns.len()).filter(|&j| columns[j] == name).collect();
            match hits.as_slice() {
                [j] => *j,
                [] => {
                    return Err(Error::format(
                        &what,
                        format!(
                            "no label column \"{name}\"; the columns are: {}",
                            columns.join(", ")
                        ),
                    ))
                }
                _ => {
                    return Err(Error::format(
                        &what,
                        format!("label column \"{name}\" appears {} times", hits.len()),
                    ))
                }
            }
        }
    };
    if columns.len() < 2 {
        return Err(Error::format(
            &what,
            format!(
                "header has {} column(s); need at least one feature besides the label",
                columns.len()
            ),
        ));
    }

    let features = columns.len() - 1;
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut label_lines = Vec::new();
    for (line_no, line) in lines {
        let fields = split_fields(line, line_no, &what)?;
        if fields.len() != columns.len() {
            return Err(Error::format(
                &what,
                format!(
                    "line {line_no} has {} fields, expected {} as in the header",
                    fields.len(),
                    columns.len()
                ),
            ));
        }
        for (j, field) in fields.iter().enumerate() {
            let v = number(field).ok_or_else(|| {
                Error::format(
                    &what,
                    format!(
                        "line {line_no}, column \"{}\" (column {}): \"{field}\" is not a finite number",
                        columns[j],
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
    let n = y.len();
    if n == 0 {
        return Err(Error::format(&what, "header but no data rows"));
    }

    let is_class_id = |v: f32| v >= 0.0 && v.fract() == 0.0 && v < 16_777_216.0;
    let classes = match classes {
        Some(false) => 0,
        Some(true) => {
            if let Some(i) = y.iter().position(|&v| !is_class_id(v)) {
                return Err(Error::format(
                    &what,
                    format!(
                        "line {}: label {} in column \"{}\" is not a non-negative integer class id",
                        label_lines[i], y[i], columns[label_col]
                    ),
                ));
            }
            max_label(&y) + 1
        }
        None => {
            if y.iter().all(|&v| is_class_id(v)) {
                let k = max_label(&y) + 1;
                let mut seen = vec![false; k];
                for &v in &y {
                    seen[v as usize] = true;
                }
                if seen.iter().all(|&s| s) {
                    k
                } else {
                    0
                }
            } else {
                0
            }
        }
    };

    Ok(Dataset {
        x,
        y,
        n,
        features,
        classes,
        image: None,
    })
}

fn max_label(y: &[f32]) -> usize {
    y.iter().fold(0f32, |m, &v| m.max(v)) as usize
}

fn number(field: &str) -> Option<f32> {
    field.parse::<f32>().ok().filter(|v| v.is_finite())
}

/// Splits one line into trimmed fields, removing surrounding double quotes.
fn split_fields(line: &str, line_no: usize, what: &str) -> Result<Vec<String>> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        let mut field = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') if chars.next_if_eq(&'"').is_some() => field.push('"'),
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => {
                        return Err(Error::format(
                            what,
                            format!(
                                "line {line_no}: unclosed quote in field {}",
                                fields.len() + 1
                            ),
                        ))
                    }
                }
            }
            while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => {
                    return Err(Error::format(
                        what,
                        format!(
                            "line {line_no}: '{c}' after the closing quote of field {}",
                            fields.len() + 1
                        ),
                    ))
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim_end().to_string());
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field.trim_end().to_string());
        }
    }
}
