//! Configuration in one place: every `KILN_*` variable the library reads is read in
//! src/config.rs, and the README's table lists exactly those.

use std::path::Path;

/// The Rust files under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_config_module_reads_kiln_variables() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    for file in files.iter().filter(|f| !f.ends_with("src/config.rs")) {
        let text = std::fs::read_to_string(file).unwrap();
        for (i, line) in text.lines().enumerate() {
            let reads = line.contains("env::var") && line.contains("\"KILN_");
            assert!(
                !reads,
                "{}:{}: reads a KILN_ variable",
                file.display(),
                i + 1
            );
        }
    }
}

#[test]
fn the_readme_table_lists_every_variable() {
    let readme = include_str!("../README.md");
    let rows: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `KILN_"))
        .filter_map(|l| l.split('`').next())
        .collect();
    for (name, _) in kiln::config::VARIABLES {
        let bare = name.trim_start_matches("KILN_");
        assert!(rows.contains(&bare), "README's table lacks {name}");
    }
    // The test suite's own variables are documented in the same place.
    let tests_only = ["FUZZ_CASES", "SOAK_EPOCHS", "CRASH_CHILD"];
    for row in rows {
        let known = kiln::config::VARIABLES
            .iter()
            .any(|(n, _)| n.trim_start_matches("KILN_") == row);
        assert!(
            known || tests_only.contains(&row),
            "README documents KILN_{row}, which nothing reads"
        );
    }
}
