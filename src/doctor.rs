//! `ocean-liner doctor`: what this host has against what Ocean Liner wants, one row per
//! check, with a severity; and `ocean-liner tune --print`, the commands that fix what a
//! command can fix. The server runs the fatal checks before it starts and refuses to
//! start on any of them (kernel-notes.md explains each setting).

use std::fmt::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Ok,
    /// Worth knowing; nothing to fix.
    Info,
    /// Works, but slower or less predictable than it could.
    Warn,
    /// The server cannot run correctly: it refuses to start.
    Fatal,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Fatal => "FATAL",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub found: String,
    pub wants: &'static str,
    pub severity: Severity,
    /// A shell command that fixes it, when one does.
    pub fix: Option<String>,
}

fn finding(
    check: &'static str,
    found: impl Into<String>,
    wants: &'static str,
    severity: Severity,
    fix: Option<String>,
) -> Finding {
    Finding {
        check,
        found: found.into(),
        wants,
        severity,
        fix,
    }
}

fn read_trim(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Every check. `data_dir`: probe O_DIRECT, the file system and the disk there.
pub fn examine(data_dir: Option<&Path>) -> Vec<Finding> {
    let mut out = Vec::new();
    out.push(kernel());
    out.extend(io_uring_checks());
    out.push(memlock());
    for (key, want) in [
        ("net.core.rmem_max", 64u64 << 20),
        ("net.core.wmem_max", 64 << 20),
        ("net.core.netdev_max_backlog", 10_000),
    ] {
        out.push(sysctl_at_least(key, want));
    }
    out.push(governor());
    out.push(clocksource());
    out.push(transparent_hugepages());
    out.push(swap());
    out.push(irq_affinity());
    if let Some(dir) = data_dir {
        out.extend(data_dir_checks(dir));
    }
    out
}

/// The first fatal io_uring finding: the server cannot run here.
pub fn fatal_io_uring() -> Option<Finding> {
    io_uring_checks()
        .into_iter()
        .find(|f| f.severity == Severity::Fatal)
}

/// The first fatal finding about `data_dir` (its file system, O_DIRECT there).
pub fn fatal_data_dir(data_dir: &Path) -> Option<Finding> {
    data_dir_checks(data_dir)
        .into_iter()
        .find(|f| f.severity == Severity::Fatal)
}

/// Every check whose failure stops the server.
pub fn fatal(data_dir: &Path) -> Option<Finding> {
    fatal_io_uring().or_else(|| fatal_data_dir(data_dir))
}

fn kernel() -> Finding {
    let release = read_trim("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let severity = match (major, minor) {
        (0, _) => Severity::Warn,
        (m, _) if m > 5 => Severity::Ok,
        (5, n) if n >= 10 => Severity::Ok,
        (5, n) if n >= 1 => Severity::Warn,
        _ => Severity::Fatal,
    };
    finding(
        "kernel",
        release,
        "5.10 or later (io_uring's file operations are mature there)",
        severity,
        None,
    )
}

/// io_uring: allowed, a ring can be created, and every opcode the storage uses exists.
fn io_uring_checks() -> Vec<Finding> {
    let mut out = Vec::new();
    let euid = unsafe { libc::geteuid() };
    match read_trim("/proc/sys/kernel/io_uring_disabled").as_deref() {
        None | Some("0") => out.push(finding(
            "kernel.io_uring_disabled",
            "0",
            "0",
            Severity::Ok,
            None,
        )),
        Some("1") if euid == 0 => out.push(finding(
            "kernel.io_uring_disabled",
            "1 (root may still use it)",
            "0",
            Severity::Warn,
            Some("sysctl -w kernel.io_uring_disabled=0".into()),
        )),
        Some(v) => out.push(finding(
            "kernel.io_uring_disabled",
            v.to_string(),
            "0",
            Severity::Fatal,
            Some("sysctl -w kernel.io_uring_disabled=0".into()),
        )),
    }
    match io_uring::IoUring::new(8) {
        Err(e) => out.push(finding(
            "io_uring ring",
            match e.raw_os_error() {
                Some(libc::ENOMEM) => format!(
                    "cannot create one ({e}): the locked-memory limit is too low for io_uring on this kernel"
                ),
                Some(libc::EPERM | libc::ENOSYS) => format!(
                    "cannot create one ({e}): a seccomp profile (e.g. a container runtime's default) blocks io_uring_setup/io_uring_enter"
                ),
                _ => format!("cannot create one ({e})"),
            },
            "io_uring_setup allowed (no seccomp filter blocking it)",
            Severity::Fatal,
            (e.raw_os_error() == Some(libc::ENOMEM)).then(|| "ulimit -l unlimited".to_string()),
        )),
        Ok(ring) => {
            let mut probe = io_uring::Probe::new();
            let probed = ring.submitter().register_probe(&mut probe).is_ok();
            use io_uring::opcode;
            let needed = [
                ("READ", opcode::Read::CODE),
                ("WRITE", opcode::Write::CODE),
                ("FSYNC", opcode::Fsync::CODE),
                ("NOP", opcode::Nop::CODE),
            ];
            let missing: Vec<&str> = needed
                .iter()
                .filter(|(_, code)| probed && !probe.is_supported(*code))
                .map(|(name, _)| *name)
                .collect();
            out.push(if !probed {
                finding(
                    "io_uring opcodes",
                    "the kernel cannot be probed (before 5.6)",
                    "READ, WRITE, FSYNC, NOP",
                    Severity::Warn,
                    None,
                )
            } else if missing.is_empty() {
                finding(
                    "io_uring opcodes",
                    "READ, WRITE, FSYNC, NOP",
                    "READ, WRITE, FSYNC, NOP",
                    Severity::Ok,
                    None,
                )
            } else {
                finding(
                    "io_uring opcodes",
                    format!("missing {}", missing.join(", ")),
                    "READ, WRITE, FSYNC, NOP",
                    Severity::Fatal,
                    None,
                )
            });
        }
    }
    out
}

fn memlock() -> Finding {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    let unlimited = limit.rlim_cur == libc::RLIM_INFINITY;
    let mib = limit.rlim_cur / (1 << 20);
    let enough = unlimited || limit.rlim_cur >= 64 << 20;
    finding(
        "memlock limit",
        if !got {
            "unknown".to_string()
        } else if unlimited {
            "unlimited".to_string()
        } else {
            format!("{mib} MiB")
        },
        "64 MiB or more (kernels before 5.12 charge io_uring rings to it)",
        if enough { Severity::Ok } else { Severity::Warn },
        (!enough).then(|| "ulimit -l unlimited   # or LimitMEMLOCK=infinity in the unit".into()),
    )
}

fn sysctl_at_least(key: &'static str, want: u64) -> Finding {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let found = read_trim(&path);
    let value: Option<u64> = found.as_deref().and_then(|v| v.parse().ok());
    let buffer = key != "net.core.netdev_max_backlog";
    let wants: &'static str = if buffer {
        "64 MiB or more (the server asks for 64 MiB socket buffers; as root it gets them anyway)"
    } else {
        "10000 or more (bursts of datagrams queue here)"
    };
    let ok = value.is_some_and(|v| v >= want);
    // Root sets its buffers past the cap (SO_RCVBUFFORCE), so then only the load tool and
    // other unprivileged clients are held to it.
    let root = unsafe { libc::geteuid() } == 0;
    let severity = match (ok, buffer && root) {
        (true, _) => Severity::Ok,
        (false, true) => Severity::Info,
        (false, false) => Severity::Warn,
    };
    finding(
        key,
        found.unwrap_or_else(|| "unknown".into()),
        wants,
        severity,
        (!ok).then(|| format!("sysctl -w {key}={want}")),
    )
}

fn governor() -> Finding {
    let governors: Vec<String> = std::fs::read_dir("/sys/devices/system/cpu")
        .map(|d| {
            d.flatten()
                .filter_map(|e| read_trim(e.path().join("cpufreq/scaling_governor")))
                .collect()
        })
        .unwrap_or_default();
    if governors.is_empty() {
        return finding(
            "CPU frequency governor",
            "none exposed (a VM, or frequency scaling off)",
            "performance",
            Severity::Info,
            None,
        );
    }
    let mut kinds = governors.clone();
    kinds.sort();
    kinds.dedup();
    let ok = kinds.iter().all(|g| g == "performance");
    finding(
        "CPU frequency governor",
        kinds.join(", "),
        "performance (no ramp-up latency on a burst)",
        if ok { Severity::Ok } else { Severity::Warn },
        (!ok).then(|| {
            "for g in /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor; do echo performance > $g; done".into()
        }),
    )
}

fn clocksource() -> Finding {
    let found = read_trim("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .unwrap_or_else(|| "unknown".into());
    let severity = match found.as_str() {
        "tsc" => Severity::Ok,
        "kvm-clock" | "hyperv_clocksource_tsc_page" | "arch_sys_counter" => Severity::Info,
        _ => Severity::Warn,
    };
    finding(
        "clocksource",
        found,
        "tsc (cheap clock reads on the hot path; leases assume a steady rate)",
        severity,
        None,
    )
}

fn transparent_hugepages() -> Finding {
    let found = read_trim("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let mode = found
        .split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
        .unwrap_or_else(|| "unknown".into());
    // The map's chunks and the value cache ask for huge pages (fewer TLB misses per
    // lookup); `always` would also give them to everything else, with compaction stalls.
    let severity = match mode.as_str() {
        "madvise" => Severity::Ok,
        "never" => Severity::Info,
        _ => Severity::Warn,
    };
    finding(
        "transparent huge pages",
        mode,
        "madvise (the map and the value cache ask for huge pages; never: 4 KiB pages, \
         slower lookups; always: compaction stalls on allocation)",
        severity,
        (severity != Severity::Ok)
            .then(|| "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled".into()),
    )
}

fn swap() -> Finding {
    let swaps = read_trim("/proc/swaps").unwrap_or_default();
    let devices = swaps
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count();
    let swappiness = read_trim("/proc/sys/vm/swappiness").unwrap_or_else(|| "?".into());
    let low = swappiness.parse::<u32>().is_ok_and(|s| s <= 10);
    let ok = devices == 0 || low;
    finding(
        "swap",
        if devices == 0 {
            "none".to_string()
        } else {
            format!("{devices} device(s), vm.swappiness={swappiness}")
        },
        "none, or vm.swappiness ≤ 10 (a swapped-out map page stalls a GET)",
        if ok { Severity::Ok } else { Severity::Warn },
        (!ok).then(|| "sysctl -w vm.swappiness=1".into()),
    )
}

/// Network interrupts on core 0, where the replication core runs, compete with it.
fn irq_affinity() -> Finding {
    let interrupts = read_trim("/proc/interrupts").unwrap_or_default();
    let nics: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n != "lo")
                .collect()
        })
        .unwrap_or_default();
    let mut on_core0 = Vec::new();
    let mut seen = 0;
    for line in interrupts.lines() {
        let Some((irq, rest)) = line.trim_start().split_once(':') else {
            continue;
        };
        if irq.parse::<u32>().is_err() || !nics.iter().any(|n| rest.contains(n.as_str())) {
            continue;
        }
        seen += 1;
        let list = read_trim(format!("/proc/irq/{irq}/smp_affinity_list")).unwrap_or_default();
        if list == "0" || list.starts_with("0-") || list.starts_with("0,") {
            on_core0.push(irq.to_string());
        }
    }
    if seen == 0 {
        return finding(
            "NIC interrupts",
            "none found (virtual NIC or MSI names without the interface)",
            "off core 0 (the replication core)",
            Severity::Info,
            None,
        );
    }
    let ok = on_core0.is_empty();
    finding(
        "NIC interrupts",
        format!("{seen} IRQ(s), {} may run on core 0", on_core0.len()),
        "off core 0 (the replication core)",
        if ok { Severity::Ok } else { Severity::Warn },
        (!ok).then(|| {
            on_core0
                .iter()
                .map(|irq| format!("echo 1 > /proc/irq/{irq}/smp_affinity_list"))
                .collect::<Vec<_>>()
                .join("; ")
        }),
    )
}

/// The data directory: its file system, its disk's scheduler, and an O_DIRECT write,
/// fdatasync and read of one page there.
fn data_dir_checks(dir: &Path) -> Vec<Finding> {
    let mut out = Vec::new();
    let probe_dir = existing_ancestor(dir);
    let (fs, device) = mount_of(&probe_dir);
    let fs_severity = match fs.as_str() {
        "ext4" | "xfs" => Severity::Ok,
        "tmpfs" | "ramfs" => Severity::Fatal,
        _ => Severity::Info,
    };
    out.push(finding(
        "data directory file system",
        format!("{fs} on {device} ({})", probe_dir.display()),
        "ext4 or xfs (O_DIRECT, durable fdatasync; tmpfs has neither)",
        fs_severity,
        None,
    ));
    if let Some(sched) = scheduler_of(&device) {
        let active = sched
            .split_whitespace()
            .find(|w| w.starts_with('['))
            .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
            .unwrap_or(sched.clone());
        let ok = matches!(
            active.as_str(),
            "none" | "mq-deadline" | "noop" | "deadline"
        );
        out.push(finding(
            "disk scheduler",
            active,
            "none or mq-deadline (no reordering delay for O_DIRECT writes)",
            if ok { Severity::Ok } else { Severity::Warn },
            (!ok).then(|| {
                format!(
                    "echo none > /sys/block/{}/queue/scheduler",
                    block_name(&device).unwrap_or_default()
                )
            }),
        ));
    }
    out.push(direct_io_probe(&probe_dir));
    out
}

fn existing_ancestor(dir: &Path) -> PathBuf {
    let mut p = dir.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from(".");
        }
    }
    p.canonicalize().unwrap_or(p)
}

/// The file system type and source of the mount holding `path`.
fn mount_of(path: &Path) -> (String, String) {
    let mounts = read_trim("/proc/self/mountinfo").unwrap_or_default();
    let mut best: Option<(usize, String, String)> = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mount_point), Some(fs), Some(source)) =
            (fields.get(4), fields.get(sep + 1), fields.get(sep + 2))
        else {
            continue;
        };
        if path.starts_with(mount_point) && best.as_ref().is_none_or(|b| mount_point.len() >= b.0) {
            best = Some((mount_point.len(), fs.to_string(), source.to_string()));
        }
    }
    best.map_or(("unknown".into(), "unknown".into()), |b| (b.1, b.2))
}

/// `/dev/nvme0n1p2` → `nvme0n1`, `/dev/sda1` → `sda`, `/dev/vda` → `vda`.
fn block_name(device: &str) -> Option<String> {
    let name = device.strip_prefix("/dev/")?;
    let sys = Path::new("/sys/class/block").join(name);
    if sys.join("partition").exists() {
        let parent = std::fs::canonicalize(&sys).ok()?;
        return Some(parent.parent()?.file_name()?.to_string_lossy().to_string());
    }
    Some(name.to_string())
}

fn scheduler_of(device: &str) -> Option<String> {
    read_trim(format!(
        "/sys/block/{}/queue/scheduler",
        block_name(device)?
    ))
}

/// Writes one page with O_DIRECT, makes it durable, reads it back.
fn direct_io_probe(dir: &Path) -> Finding {
    let path = dir.join(format!(".ocean-liner-doctor-{}", std::process::id()));
    let result = (|| -> std::io::Result<std::time::Duration> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        let page = crate::storage::io::AlignedBuf::from_slice(&[0x5A; 4096]);
        let began = Instant::now();
        use std::os::unix::fs::FileExt;
        file.write_all_at(&page, 0)?;
        file.sync_data()?;
        let took = began.elapsed();
        let mut back = crate::storage::io::AlignedBuf::new(4096);
        file.read_exact_at(&mut back, 0)?;
        if back[..] != page[..] {
            return Err(std::io::Error::other("read back other bytes than written"));
        }
        Ok(took)
    })();
    let _ = std::fs::remove_file(&path);
    match result {
        Ok(took) => finding(
            "O_DIRECT write + fdatasync",
            format!("ok, one 4 KiB page in {:.2} ms", took.as_secs_f64() * 1e3),
            "works in the data directory",
            Severity::Ok,
            None,
        ),
        Err(e) => finding(
            "O_DIRECT write + fdatasync",
            format!("failed: {e}"),
            "works in the data directory",
            Severity::Fatal,
            None,
        ),
    }
}

/// The report as a table.
pub fn render(findings: &[Finding]) -> String {
    let w0 = findings
        .iter()
        .map(|f| f.check.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let w1 = findings
        .iter()
        .map(|f| f.found.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 60);
    let mut out = String::new();
    let _ = writeln!(out, "{:<6} {:<w0$}  {:<w1$}  wants", "", "check", "found");
    for f in findings {
        let _ = writeln!(
            out,
            "{:<6} {:<w0$}  {:<w1$}  {}",
            f.severity.name(),
            f.check,
            f.found,
            f.wants
        );
    }
    let worst = findings
        .iter()
        .map(|f| f.severity)
        .max()
        .unwrap_or(Severity::Ok);
    let fixes = findings.iter().filter(|f| f.fix.is_some()).count();
    let _ = writeln!(
        out,
        "\n{}{}",
        match worst {
            Severity::Fatal => "FATAL: the server will refuse to start on this host.",
            Severity::Warn => "The server runs here; the warnings cost speed or predictability.",
            _ => "Nothing to fix.",
        },
        if fixes > 0 {
            format!(" `ocean-liner tune --print` lists {fixes} fix(es).")
        } else {
            String::new()
        }
    );
    out
}

/// The fixes as a shell script.
pub fn tune_script(findings: &[Finding]) -> String {
    let mut out = String::from(
        "#!/bin/sh\n# Fixes for what `ocean-liner doctor` found (run as root; none persist across a reboot:\n# put the sysctls in /etc/sysctl.d/ and the rest in a boot unit to keep them).\n",
    );
    for f in findings.iter().filter(|f| f.fix.is_some()) {
        let _ = writeln!(out, "# {}: {} (wants {})", f.check, f.found, f.wants);
        let _ = writeln!(out, "{}", f.fix.as_deref().unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_gets_a_full_report_and_its_data_dir_probe_passes() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let findings = examine(Some(dir.path()));
        let checks: Vec<&str> = findings.iter().map(|f| f.check).collect();
        for want in [
            "kernel",
            "kernel.io_uring_disabled",
            "io_uring opcodes",
            "memlock limit",
            "net.core.rmem_max",
            "net.core.netdev_max_backlog",
            "CPU frequency governor",
            "clocksource",
            "transparent huge pages",
            "swap",
            "NIC interrupts",
            "data directory file system",
            "O_DIRECT write + fdatasync",
        ] {
            assert!(checks.contains(&want), "no {want} in {checks:?}");
        }
        // The project's own tests run here, so nothing may be fatal.
        assert_eq!(fatal(dir.path()), None, "{}", render(&findings));
        let text = render(&findings);
        assert!(text.contains("O_DIRECT write + fdatasync"));
        let script = tune_script(&findings);
        assert!(script.starts_with("#!/bin/sh"));
        assert_eq!(
            script.lines().filter(|l| !l.starts_with('#')).count(),
            findings.iter().filter(|f| f.fix.is_some()).count()
        );
    }

    #[test]
    fn tmpfs_is_fatal_for_a_data_directory() {
        if !Path::new("/dev/shm").is_dir() {
            eprintln!("SKIPPED: no /dev/shm");
            return;
        }
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let f = fatal(dir.path()).expect("tmpfs is fatal");
        assert!(
            f.check == "data directory file system" || f.check == "O_DIRECT write + fdatasync",
            "{f:?}"
        );
    }
}
