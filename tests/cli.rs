//! The command line: `apiary config check`, and a broker that refuses a bad config.

mod common;

use std::process::Command;

#[test]
fn config_check_prints_effective_config() {
    let out = Command::new(common::apiary_bin())
        .args([
            "config",
            "check",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/config.xml"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("max_queue_size"), "{stdout}");
    assert!(stdout.contains("is valid"));
}

#[test]
fn bad_config_names_element_and_line_and_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.xml");
    std::fs::write(
        &file,
        "<hivemq>\n  <mqtt>\n    <queued-messages>\n      <max-queue-size>lots</max-queue-size>\n",
    )
    .unwrap();
    for args in [&["config", "check"][..], &["run", "--config"][..]] {
        let out = Command::new(common::apiary_bin())
            .args(args)
            .arg(&file)
            .env("APIARY_DATA_DIR", dir.path().join("d"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("line"), "{stderr}");
    }
    std::fs::write(&file, "<hivemq>\n  <mqtt>\n    <queued-messages>\n      <max-queue-size>lots</max-queue-size>\n    </queued-messages>\n  </mqtt>\n</hivemq>\n").unwrap();
    let out = Command::new(common::apiary_bin())
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 4") && stderr.contains("max-queue-size"),
        "{stderr}"
    );
    assert!(!dir.path().join("d").exists(), "nothing was started");
}

#[test]
fn unset_placeholder_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.xml");
    std::fs::write(&file, "<hivemq><listeners><tcp-listener><port>${ENV:APIARY_TEST_SURELY_UNSET}</port></tcp-listener></listeners></hivemq>").unwrap();
    let out = Command::new(common::apiary_bin())
        .args(["config", "check"])
        .arg(&file)
        .env_remove("APIARY_TEST_SURELY_UNSET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("APIARY_TEST_SURELY_UNSET"));
}
