//! Faults on real processes (`ocean_liner::verify::faults`): three nodes in network
//! namespaces, clients in a fourth, faults injected with iptables, tc, signals and the
//! file system, every history checked for linearizability and lost acknowledged writes.
//!
//! CI runs a short subset. Every scenario: `FAULTS=all cargo test --release --test faults
//! -- --nocapture`; some: `FAULTS=loss-20,bridge`; another seed: `SEED=7`. Needs root:
//! elsewhere the test says it is skipped and passes.
//!
//! A soak (not in CI): `SOAK_MINUTES=30 FAULT_EVERY_S=30 cargo test --release --test faults
//! soak -- --ignored --nocapture` runs the cluster under load with a random fault every
//! `FAULT_EVERY_S` seconds and prints a row every 10 s.

use ocean_liner::verify::faults::{self, Hosts, SCENARIOS};
use std::path::Path;
use std::time::Duration;

const CI_SUBSET: &[&str] = &[
    "leader-isolated",
    "kill-restart",
    "pause-leader",
    "disk-full-follower",
    "eio-leader",
];

#[test]
fn faults_on_real_processes_lose_nothing_and_stay_linearizable() {
    if let Err(why) = Hosts::available() {
        eprintln!("SKIPPED: the fault harness {why}");
        return;
    }
    let wanted: Vec<String> = match std::env::var("FAULTS") {
        Ok(v) if v == "all" => SCENARIOS.iter().map(|s| s.name.to_string()).collect(),
        Ok(v) => v.split(',').map(str::to_string).collect(),
        Err(_) => CI_SUBSET.iter().map(|s| s.to_string()).collect(),
    };
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let bin = Path::new(env!("CARGO_BIN_EXE_ocean-liner"));
    let mut failures = Vec::new();
    eprintln!(
        "| scenario | seed | operations | acknowledged writes | failed ops | ok/s before | ok/s during | ok/s after | linearizable | acknowledged writes lost | leader before → after | all nodes caught up |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for name in &wanted {
        let scenario = SCENARIOS
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no scenario {name}"));
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("faults-{name}-{seed}"));
        let r = faults::run_scenario(scenario, seed, bin, &dir)
            .unwrap_or_else(|e| panic!("{name}: the harness failed: {e}"));
        eprintln!(
            "| {name} | {seed} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} → {} | {} |",
            r.operations,
            r.acknowledged_writes,
            r.failed_operations,
            r.ok_per_s[0],
            r.ok_per_s[1],
            r.ok_per_s[2],
            if r.linearizable { "yes" } else { "NO" },
            r.lost_writes,
            r.leaders.0,
            r.leaders.1.map_or("none".into(), |k| k.to_string()),
            r.converged_after
                .map_or("no".into(), |d| format!("{:.1} s", d.as_secs_f64()))
        );
        if let Some(problem) = r.problem {
            failures.push(format!(
                "{name} (seed {seed}, kept in {:?}): {problem}",
                r.kept
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The soak: minutes of load and random faults, then the whole history checked.
#[test]
#[ignore = "minutes long; run by hand"]
fn soak() {
    if let Err(why) = Hosts::available() {
        eprintln!("SKIPPED: the fault harness {why}");
        return;
    }
    let env = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let minutes = env("SOAK_MINUTES", 10);
    let every = env("FAULT_EVERY_S", 30);
    let seed = env("SEED", 1);
    let bin = Path::new(env!("CARGO_BIN_EXE_ocean-liner"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("soak-{seed}"));
    let r = faults::soak(
        bin,
        &dir,
        Duration::from_secs(minutes * 60),
        Duration::from_secs(every),
        seed,
        &mut std::io::stderr(),
    )
    .unwrap_or_else(|e| panic!("the soak failed: {e}"));
    let run = &r.run;
    eprintln!(
        "\nsoak: {minutes} min, seed {seed}: {} faults, {} failovers seen; recorded {} operations, \
         {} acknowledged writes, {} failed; linearizable: {}; acknowledged writes lost: {}; \
         all nodes caught up: {}",
        r.faults_injected,
        r.failovers,
        run.operations,
        run.acknowledged_writes,
        run.failed_operations,
        if run.linearizable { "yes" } else { "NO" },
        run.lost_writes,
        run.converged_after
            .map_or("no".into(), |d| format!("in {:.1} s", d.as_secs_f64()))
    );
    assert!(
        run.problem.is_none(),
        "{:?} (kept in {:?})",
        run.problem,
        run.kept
    );
}
