//! Read the rules path: one file, or every `.yaml`/`.yml`/`.json` file of a directory.
//!
//! Blocking file I/O: call it from `check`, from start-up, or inside `spawn_blocking`.
//! Names starting with '.' are skipped, which also skips the kubelet's `..data` and
//! `..2026_…` entries of a ConfigMap volume (the visible names are symlinks into them).

use std::path::Path;

use super::RuleSet;
use super::compile::{RuleError, SourceFile, compile};

fn io_error(path: &Path, e: std::io::Error) -> Vec<RuleError> {
    vec![RuleError {
        file: path.display().to_string(),
        task: None,
        key: String::new(),
        message: format!("cannot read: {e}"),
    }]
}

pub(super) fn is_rules_file(name: &str) -> bool {
    !name.starts_with('.')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// Read every rules file under `path`, in name order.
pub fn read(path: &Path) -> Result<Vec<SourceFile>, Vec<RuleError>> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if !meta.is_dir() {
        let text = std::fs::read_to_string(path).map_err(|e| io_error(path, e))?;
        return Ok(vec![SourceFile {
            name: path.display().to_string(),
            text,
        }]);
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| io_error(path, e))? {
        let entry = entry.map_err(|e| io_error(path, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // metadata() follows symlinks: a ConfigMap's files are symlinks into ..data.
        if is_rules_file(&name) && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            names.push(name);
        }
    }
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let file = path.join(&name);
            let text = std::fs::read_to_string(&file).map_err(|e| io_error(&file, e))?;
            Ok(SourceFile {
                name: file.display().to_string(),
                text,
            })
        })
        .collect()
}

/// Read and compile.
pub fn load(path: &Path) -> Result<RuleSet, Vec<RuleError>> {
    compile(&read(path)?, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_skips_hidden_and_foreign_files() {
        assert!(is_rules_file("rules.yaml"));
        assert!(is_rules_file("b.json"));
        assert!(!is_rules_file("..data"));
        assert!(!is_rules_file(".rules.yaml.swp"));
        assert!(!is_rules_file("README.md"));
    }
}
