//! The floors of the code, lowest first: a module may use only modules on lower
//! floors (or its own). A test below reads every `crate::` path in `node/src`
//! outside test code and fails on one that climbs, so the import graph stays
//! without a cycle. DESIGN.md and the README's code map describe the same table.
//!
//! Floor 5 holds three siblings that never import each other (same floor): the
//! collectors hand samples to the rules through `model::InputSink`; the rules queue
//! notifications through `store::alerting::Outbox`, which the notifier implements;
//! the node's wiring connects them.

/// `(module, floor)`; `main.rs` and `lib.rs` sit above everything.
pub const FLOORS: &[(&str, u8)] = &[
    ("model", 1),
    ("config", 2),
    ("store", 3),
    ("tls", 3),
    ("transport", 3),
    ("ownership", 4),
    ("collector", 5),
    ("notify", 5),
    ("remote_write", 5),
    ("rules", 5),
    ("cluster", 6),
    ("api", 7),
    ("node", 8),
    ("cli", 9),
];

/// The floor of a top-level module, `None` for one the table does not name.
pub fn floor_of(module: &str) -> Option<u8> {
    FLOORS.iter().find(|(m, _)| *m == module).map(|(_, f)| *f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// Every `.rs` file under `dir`.
    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The code of a file that is not test code: a `tests.rs` file has none; a
    /// file ends where its first `#[cfg(test)]` starts (tests close every file
    /// here); comment lines are dropped.
    fn production_code(path: &Path) -> String {
        if path.file_name().is_some_and(|n| n == "tests.rs") {
            return String::new();
        }
        let text = std::fs::read_to_string(path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        code.lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `crate::NAME` paths in `code`, and `crate::{NAME, ...}` groups.
    fn crate_paths(code: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    out.push(name);
                }
            } else {
                out.push(
                    rest.chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect(),
                );
            }
        }
        out
    }

    #[test]
    fn no_import_climbs_a_floor() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut climbs = Vec::new();
        let mut unknown = Vec::new();
        for path in files {
            let rel = path.strip_prefix(&src).unwrap();
            let first = rel.components().next().unwrap().as_os_str();
            let module = first.to_string_lossy().trim_end_matches(".rs").to_string();
            if module == "main" || module == "lib" || module == "floors" {
                continue;
            }
            let Some(from) = floor_of(&module) else {
                unknown.push(module);
                continue;
            };
            for used in crate_paths(&production_code(&path)) {
                if used == module || used.is_empty() {
                    continue;
                }
                match floor_of(&used) {
                    Some(to) if to < from => {}
                    Some(to) => climbs.push(format!(
                        "{} (floor {from}) uses crate::{used} (floor {to})",
                        rel.display()
                    )),
                    None => unknown.push(used),
                }
            }
        }
        unknown.sort();
        unknown.dedup();
        assert!(
            unknown.is_empty(),
            "modules missing from floors::FLOORS: {unknown:?}"
        );
        assert!(
            climbs.is_empty(),
            "imports that climb a floor (see node/src/floors.rs):\n{}",
            climbs.join("\n")
        );
    }

    #[test]
    fn the_scanner_sees_paths_and_groups() {
        let code =
            "use crate::model::{A, B};\nuse crate::{config, store::X};\nlet x = crate::api::f();";
        assert_eq!(
            crate_paths(code),
            ["model", "config", "store", "api"].map(String::from)
        );
    }
}
