//! The extensions folder: which `<id>/` folders hold an extension that may be loaded.
//!
//! HiveMQ's rules: a folder with a `DISABLED` file is skipped; the descriptor must be valid and
//! its `<id>` equal the folder name, otherwise the folder is skipped with a warning. Ours add:
//! exactly one `.wasm` component in the folder.

use std::path::{Path, PathBuf};

use super::descriptor::{self, Descriptor};

/// The marker file that keeps an extension from loading.
pub const DISABLED: &str = "DISABLED";

/// An extension folder that passed the checks.
#[derive(Debug, Clone)]
pub struct Found {
    pub descriptor: Descriptor,
    pub folder: PathBuf,
    pub component: PathBuf,
}

/// Every loadable extension in `dir`, in start order. A missing `dir` has no extensions.
pub fn scan(dir: &Path) -> Vec<Found> {
    let mut found: Vec<Found> = folders(dir).iter().filter_map(|f| check(f)).collect();
    sort_for_start(&mut found);
    found
}

/// The sub-folders of `dir` without a `DISABLED` file, sorted by name (so that warnings and
/// ties come out the same on every start).
pub fn folders(dir: &Path) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot read the extensions folder {}: {e}", dir.display());
            }
            return Vec::new();
        }
    };
    let mut folders: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !is_disabled(p))
        .collect();
    folders.sort();
    folders
}

/// Start order: start-priority descending, then id.
pub fn sort_for_start(found: &mut [Found]) {
    found.sort_by(|a, b| {
        b.descriptor
            .start_priority
            .cmp(&a.descriptor.start_priority)
            .then_with(|| a.descriptor.id.cmp(&b.descriptor.id))
    });
}

/// Whether the folder's extension is disabled by its marker file.
pub fn is_disabled(folder: &Path) -> bool {
    folder.join(DISABLED).exists()
}

/// Checks one folder; `None` (with the reason logged) if it is not loadable.
pub fn check(folder: &Path) -> Option<Found> {
    let shown = folder.display();
    if is_disabled(folder) {
        return None;
    }
    let descriptor = match Descriptor::from_file(&folder.join(descriptor::FILE_NAME)) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(
                "{shown}: no valid {}: {e:#}. The extension is not loaded.",
                descriptor::FILE_NAME
            );
            return None;
        }
    };
    let name = folder.file_name().map(|n| n.to_string_lossy().into_owned());
    if name.as_deref() != Some(descriptor.id.as_str()) {
        tracing::warn!(
            "{shown}: the folder name must equal the extension id \"{}\". The extension is not loaded.",
            descriptor.id
        );
        return None;
    }
    let components: Vec<PathBuf> = std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "wasm"))
                .collect()
        })
        .unwrap_or_default();
    let [component] = components.as_slice() else {
        tracing::warn!(
            "{shown}: expected exactly one .wasm component, found {}. The extension is not loaded.",
            components.len()
        );
        return None;
    };
    Some(Found {
        descriptor,
        folder: folder.to_path_buf(),
        component: component.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(dir: &Path, folder: &str, id: &str, start_priority: i32, wasm: &[&str]) {
        let f = dir.join(folder);
        std::fs::create_dir_all(&f).unwrap();
        std::fs::write(
            f.join(descriptor::FILE_NAME),
            format!(
                "<hivemq-extension><id>{id}</id><name>{id} ext</name><version>1.0</version>\
                 <start-priority>{start_priority}</start-priority></hivemq-extension>"
            ),
        )
        .unwrap();
        for w in wasm {
            std::fs::write(f.join(w), b"\0asm").unwrap();
        }
    }

    #[test]
    fn applies_hivemq_rules_and_start_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make(d, "low", "low", 1, &["a.wasm"]);
        make(d, "high", "high", 5000, &["b.wasm"]);
        make(d, "default", "default", 1000, &["c.wasm"]);
        make(d, "off", "off", 9000, &["d.wasm"]);
        std::fs::write(d.join("off").join(DISABLED), b"").unwrap();
        make(d, "wrong-folder", "other-id", 9000, &["e.wasm"]);
        make(d, "two", "two", 9000, &["x.wasm", "y.wasm"]);
        make(d, "none", "none", 9000, &[]);
        std::fs::create_dir_all(d.join("empty")).unwrap();
        std::fs::write(d.join("stray-file.wasm"), b"").unwrap();

        let ids: Vec<String> = scan(d).into_iter().map(|f| f.descriptor.id).collect();
        assert_eq!(ids, ["high", "default", "low"]);
        assert!(scan(&d.join("missing")).is_empty());
    }
}
