//! `tools/cluster.sh` as a user runs it: start three nodes, add a fourth, promote it,
//! remove a first one, and every step's effect seen in `ocean-liner member list`.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ocean-liner");

fn script(dir: &Path, peer_base: u16, client_base: u16, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/cluster.sh"))
        .args(args)
        .arg(dir)
        .env("OCEAN_LINER", BIN)
        .env("PEER_PORT_BASE", peer_base.to_string())
        .env("CLIENT_PORT_BASE", client_base.to_string())
        .env("OL_ARGS", "--batch-window-ms 10")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "cluster.sh {args:?} failed: {text}");
    text
}

fn roles(peer: u16) -> Vec<(usize, String)> {
    let out = Command::new(BIN)
        .args(["member", "list", "--peer", &format!("127.0.0.1:{peer}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(2)
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap().parse().unwrap(), w.next().unwrap().into())
        })
        .collect()
}

#[test]
fn cluster_script_adds_promotes_and_removes_nodes() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("c");
    // Ports of their own (this test binary runs alone; others use 30000 and up).
    let base = 21_000 + (std::process::id() % 400) as u16 * 10;
    let (peers, clients) = (base, base + 5);
    script(&dir, peers, clients, &["start", "3"]);
    let stop = || {
        let _ = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/cluster.sh"))
            .args(["stop"])
            .arg(&dir)
            .env("OCEAN_LINER", BIN)
            .output();
    };
    let result = std::panic::catch_unwind(|| {
        let added = script(&dir, peers, clients, &["add"]);
        assert!(added.contains("add node 3 as a learner"), "{added}");
        assert!(roles(peers).contains(&(3, "learner".into())));
        script(&dir, peers, clients, &["promote", "3"]);
        assert_eq!(
            roles(peers + 3)
                .iter()
                .filter(|(_, r)| r != "learner")
                .count(),
            4
        );
        script(&dir, peers, clients, &["remove", "0"]);
        let now = roles(peers + 3);
        assert_eq!(
            now.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let status = script(&dir, peers, clients, &["status"]);
        assert_eq!(status.lines().count(), 3, "{status}");
        assert!(status.contains(" leader "), "{status}");
    });
    stop();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
