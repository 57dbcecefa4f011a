//! WASM guests for the tests: the extensions in `extensions/` (and test-only ones), built for
//! wasm32-wasip2 by the test itself (cargo caches the build in target/wasm-guests), and put
//! together as extension folders.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Builds the Rust extension crate at `extensions/<name>` (relative to the repository) once per
/// test process, and returns the path of its component.
pub fn build(name: &str) -> PathBuf {
    build_at(&format!("extensions/{name}"))
}

/// Builds the extension crate in `relative` (a folder of the repository holding Cargo.toml) once
/// per test process; the component is named after the folder's last part.
pub fn build_at(relative: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(relative) {
        return path.clone();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target").join("wasm-guests");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(root.join(relative).join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo");
    assert!(
        status.success(),
        "building {relative} failed (rustup target add wasm32-wasip2?)"
    );
    let name = Path::new(relative)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace('-', "_");
    let path = target.join("wasm32-wasip2/debug").join(format!("{name}.wasm"));
    built.insert(relative.into(), path.clone());
    path
}

/// Puts an extension folder `<dir>/<id>/` together: descriptor, component, `conf/config.properties`.
pub fn install(dir: &Path, id: &str, wasm: &Path, config: &str, start_priority: i32) -> PathBuf {
    let folder = dir.join(id);
    std::fs::create_dir_all(folder.join("conf")).unwrap();
    std::fs::write(
        folder.join("hivemq-extension.xml"),
        format!(
            "<hivemq-extension><id>{id}</id><name>{id} name</name><version>1.2.3</version>\
             <start-priority>{start_priority}</start-priority></hivemq-extension>"
        ),
    )
    .unwrap();
    std::fs::copy(wasm, folder.join(format!("{id}.wasm"))).unwrap();
    std::fs::write(folder.join("conf/config.properties"), config).unwrap();
    folder
}

/// Writes the extension's `conf/sandbox.properties` (its network allow-list).
pub fn allow(folder: &Path, sandbox_properties: &str) {
    std::fs::write(folder.join("conf/sandbox.properties"), sandbox_properties).unwrap();
}
