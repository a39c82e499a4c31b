//! `ringnode cordon` / `uncordon` (issue 19, item 2) on a real PostgreSQL:
//! the member sheds its partitions and stays a live member holding nothing,
//! `ringnode status` shows the cordon (text and JSON, of an absent node id
//! too), and an unknown ring exits 3 naming it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use leasering::RingNode;
use leasering_testkit::{unique_name, TestPostgres};

const LIMIT: Duration = Duration::from_secs(30);

fn ringnode(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringnode"))
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ringnode");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn cordon_and_uncordon_a_member_and_status_shows_it() {
    let db = TestPostgres::shared().unwrap_or_else(|e| panic!("{e}"));
    let url = db.url();
    let ring = unique_name("cordon");
    let start = |id: &str| {
        RingNode::builder(db.pool(4).unwrap(), ring.clone())
            .node_id(id)
            .ring_size(64)
            .lease_ttl(Duration::from_secs(10))
            .start()
            .unwrap()
    };
    let a = start("alpha");
    let b = start("beta");
    wait_until("both to hold a share", || {
        a.owned_partitions().len() + b.owned_partitions().len() == 64
            && !b.owned_partitions().is_empty()
    });
    let (code, out, err) = ringnode(&[
        "cordon",
        "--database-url",
        &url,
        "--ring-id",
        &ring,
        "--node-id",
        "beta",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cordoned node \"beta\""), "{out}");
    wait_until("beta to shed everything to alpha", || {
        b.owned_partitions().is_empty() && a.owned_partitions().len() == 64
    });
    assert!(b.status().joined, "beta stays a member");
    let (code, text, err) = ringnode(&["status", "--database-url", &url, "--ring-id", &ring]);
    assert_eq!(code, 0, "{err}");
    let line = text.lines().find(|l| l.starts_with("beta")).unwrap();
    assert!(line.contains("cordoned"), "{text}");
    let line = text.lines().find(|l| l.starts_with("alpha")).unwrap();
    assert!(line.contains("eligible"), "{text}");
    // A cordon of a node id that is not a member now.
    let (code, _, err) = ringnode(&[
        "cordon",
        "--database-url",
        &url,
        "--ring-id",
        &ring,
        "--node-id",
        "gamma",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = ringnode(&[
        "status",
        "--database-url",
        &url,
        "--ring-id",
        &ring,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["members"][1]["node_id"], "beta", "{v}");
    assert_eq!(v["members"][1]["cordoned"], true, "{v}");
    assert_eq!(v["members"][1]["ready"], true, "{v}");
    assert_eq!(v["members"][0]["cordoned"], false, "{v}");
    assert_eq!(v["cordoned"], serde_json::json!(["beta", "gamma"]), "{v}");
    let (_, text, _) = ringnode(&["status", "--database-url", &url, "--ring-id", &ring]);
    assert!(text.contains("cordoned, not members now: gamma"), "{text}");
    // Lifted: beta takes a share again.
    let (code, out, err) = ringnode(&[
        "uncordon",
        "--database-url",
        &url,
        "--ring-id",
        &ring,
        "--node-id",
        "beta",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until("beta to get a share back", || {
        !b.owned_partitions().is_empty()
            && a.owned_partitions().len() + b.owned_partitions().len() == 64
    });
    // Bad input: an unknown ring exits 3 and names it; a missing flag 2.
    let (code, _, err) = ringnode(&[
        "cordon",
        "--database-url",
        &url,
        "--ring-id",
        "no-such-ring",
        "--node-id",
        "beta",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no-such-ring"), "{err}");
    let (code, _, err) = ringnode(&["cordon", "--database-url", &url, "--ring-id", &ring]);
    assert_eq!(code, 2, "{err}");
    a.stop().unwrap();
    b.stop().unwrap();
}

/// `ringnode pin` / `unpin` (issue 19, item 6): the partition moves to the
/// node, `ringnode status` lists the pin (text and JSON), a partition
/// outside the ring exits 2 naming it, a pin without `--node-id` exits 2.
#[test]
fn pin_and_unpin_a_partition_and_status_shows_it() {
    let db = TestPostgres::shared().unwrap_or_else(|e| panic!("{e}"));
    let url = db.url();
    let ring = unique_name("pin");
    let start = |id: &str| {
        RingNode::builder(db.pool(4).unwrap(), ring.clone())
            .node_id(id)
            .ring_size(64)
            .placement(leasering::Placement::Balanced)
            .lease_ttl(Duration::from_secs(10))
            .start()
            .unwrap()
    };
    let a = start("alpha");
    let b = start("beta");
    wait_until("both to hold a share", || {
        a.owned_partitions().len() + b.owned_partitions().len() == 64
            && !b.owned_partitions().is_empty()
    });
    let p = b.owned_partitions().iter().next().unwrap();
    let ps = p.to_string();
    let args = [
        "--database-url",
        &url,
        "--ring-id",
        &ring,
        "--partition",
        &ps,
    ];
    let (code, out, err) = ringnode(&[&["pin"][..], &args, &["--node-id", "alpha"]].concat());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("pinned partition {p}")), "{out}");
    wait_until("alpha to own the pinned partition", || {
        a.owned_partitions().contains(p) && !b.owned_partitions().contains(p)
    });
    let (code, text, err) = ringnode(&["status", "--database-url", &url, "--ring-id", &ring]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains(&format!("pinned: {p} -> alpha")), "{text}");
    let (code, json, err) = ringnode(&[
        "status",
        "--database-url",
        &url,
        "--ring-id",
        &ring,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["pins"][0]["partition"], p);
    assert_eq!(v["pins"][0]["node_id"], "alpha");
    // Bad input.
    let (code, _, err) = ringnode(&[
        "pin",
        "--database-url",
        &url,
        "--ring-id",
        &ring,
        "--partition",
        "64",
        "--node-id",
        "alpha",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("partition 64"), "{err}");
    let (code, _, err) = ringnode(&[&["pin"][..], &args].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--node-id"), "{err}");
    // Unpinned.
    let (code, out, err) = ringnode(&[&["unpin"][..], &args].concat());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("unpinned partition {p}")), "{out}");
    let (_, text, _) = ringnode(&["status", "--database-url", &url, "--ring-id", &ring]);
    assert!(!text.contains("pinned:"), "{text}");
    a.stop().unwrap();
    b.stop().unwrap();
}

/// Issue 19: `ringnode status` of a ring with a move budget says so, how
/// many partitions are in motion and how many moves are held back (text
/// and JSON); once settled, balanced.
#[test]
fn status_shows_a_rings_move_budget() {
    let db = TestPostgres::shared().unwrap_or_else(|e| panic!("{e}"));
    let url = db.url();
    let ring = unique_name("budget");
    let start = |id: &str| {
        RingNode::builder(db.pool(4).unwrap(), ring.clone())
            .node_id(id)
            .ring_size(64)
            .placement(leasering::Placement::Balanced)
            .max_moving(4)
            .lease_ttl(Duration::from_secs(10))
            .start()
            .unwrap()
    };
    let a = start("alpha");
    let b = start("beta");
    wait_until("both to hold 32", || {
        a.owned_partitions().len() == 32 && b.owned_partitions().len() == 32
    });
    assert_eq!(b.status().moves_pending, 0);
    let (code, text, err) = ringnode(&["status", "--database-url", &url, "--ring-id", &ring]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("move budget 4: 0 in motion, 0 moves held back for later steps (balanced)"),
        "{text}"
    );
    let (code, json, err) = ringnode(&[
        "status",
        "--database-url",
        &url,
        "--ring-id",
        &ring,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["max_moving"], 4);
    assert_eq!(v["moves_pending"], 0);
    a.stop().unwrap();
    b.stop().unwrap();
}
