//! The load generator itself is tested: `apiary-bench --quick` runs scenarios 1 and 2 against an
//! in-process Apiary and must deliver messages in every figure.

mod common;

use std::time::Duration;

use apiary::config::PersistenceMode;
use apiary::mqtt::ProtocolVersion;
use common::{RawClient, TestBroker, connect_packet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_fan_in_and_fan_out_against_apiary() {
    let broker = TestBroker::start(|c| c.persistence = PersistenceMode::InMemory).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("results.json");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_apiary-bench"))
        .arg("--quick")
        .args(["--scenarios", "1,2"])
        .args(["--fan-in-publishers", "10", "--fan-out-subscribers", "10"])
        .args(["--warmup", "0.1", "--duration", "0.4"])
        .args(["--target", &format!("apiary={}", broker.addr)])
        .arg("--json")
        .arg(&json)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("apiary-bench finishes in time")
        .expect("apiary-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "apiary-bench failed\n{stdout}\n{stderr}");
    for label in [
        "1 fan-in 10→1 QoS 0",
        "1 fan-in 10→1 QoS 1",
        "2 fan-out 1→10 QoS 0",
        "2 fan-out 1→10 QoS 1",
    ] {
        assert!(stdout.contains(label), "table lacks {label:?}:\n{stdout}");
    }

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let figures = report["targets"][0]["figures"].as_array().expect("figures");
    let keys: Vec<&str> = figures.iter().filter_map(|f| f["key"].as_str()).collect();
    assert_eq!(keys, ["1.qos0", "1.qos1", "2.qos0", "2.qos1"]);
    for f in figures {
        let rate = f["value"].as_f64().unwrap_or_default();
        assert!(rate > 0.0, "nothing delivered in {f}");
        // Flow control keeps subscribers close behind: nearly everything published is delivered.
        let published = f["details"]["published"].as_f64().unwrap();
        let delivered = f["details"]["delivered"].as_f64().unwrap();
        assert!(delivered > 0.0 && published > 0.0, "{f}");
    }

    // The broker still serves after the load.
    let (_client, ack) = RawClient::connect(broker.addr, connect_packet(ProtocolVersion::V5, "after", true)).await;
    assert_eq!(ack.code, 0);
    broker.stop().await;
}
