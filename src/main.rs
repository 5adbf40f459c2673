//! `ocean-liner`: the server, its command-line client and its load tool.
//!
//! Parses flags and hands off; all logic lives in the library.

use clap::{Parser, Subcommand};
use ocean_liner::client::bench::{self, BenchArgs};
use ocean_liner::client::{Client, ClientOptions, resolve_servers};
use ocean_liner::server::{self, ServerConfig};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// A Raft-replicated key-value store built for throughput: per-core UDP shards, writes
/// batched into one durable O_DIRECT log entry per window.
///
/// With no subcommand, starts a server (single node, ./data, UDP 127.0.0.1:9000).
#[derive(Parser)]
#[command(
    name = "ocean-liner",
    version,
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    server: ServerConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Start a server (the same as giving no subcommand).
    Serve(ServerConfig),
    /// Store VALUE under KEY.
    Set {
        key: String,
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print KEY's value (exit 0); a missing key prints nothing and exits 1.
    Get {
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete KEY (deleting an absent key succeeds).
    Del {
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print the server's counters.
    Stats {
        #[command(flatten)]
        target: Target,
        /// Print one JSON object (numbers as numbers) instead of key=value lines.
        #[arg(long)]
        json: bool,
    },
    /// A live view of a node or cluster (one row per address in --server), refreshed
    /// every --interval: role, term, commit lag, writes and GETs per second, p99, keys.
    Top {
        #[command(flatten)]
        target: Target,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many screens (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
        /// Print screens one after another instead of redrawing the terminal.
        #[arg(long)]
        no_clear: bool,
    },
    /// Check that a server answers, and print the round-trip time.
    Ping {
        #[command(flatten)]
        target: Target,
    },
    /// Run a load test against a server and report throughput and latency.
    Bench(BenchArgs),
    /// Draw SVG charts (throughput, latency distributions, operations per second over
    /// time) of the `bench --json` reports in DIR, into DIR (as `tools/compare.sh` does).
    Plot { dir: std::path::PathBuf },
    /// Answer every request on a UDP port at once, doing no work: the ceiling of this
    /// machine's UDP request/response path for `ocean-liner bench` (run the bench against
    /// it as against a node). Runs until killed, or for --duration.
    UdpCeiling {
        /// Address to answer on.
        #[arg(long, default_value = "127.0.0.1:9500")]
        listen: std::net::SocketAddr,
        /// Receiving threads (one socket each, as one shard each).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
        threads: u64,
        /// Seconds to run (default: until killed).
        #[arg(long)]
        duration: Option<f64>,
    },
    /// Check this host against what Ocean Liner wants (kernel, io_uring, limits, network
    /// buffers, CPU, clock, memory, the data directory's disk); exit 1 on anything fatal.
    Doctor {
        /// Also probe O_DIRECT, the file system and the disk scheduler here.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Print the commands that fix what `doctor` finds (a shell script, for root).
    Tune {
        /// Print the commands (the only mode: nothing is changed by this command).
        #[arg(long, required = true)]
        print: bool,
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Back a node up into a snapshot file, or restore one into a new data directory.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// List, add, promote and remove a cluster's members, or hand leadership over
    /// (over the peer port; any member's address will do: requests go to the leader).
    Member {
        #[command(subcommand)]
        command: MemberCommand,
        /// Peer address (HOST:PORT, as in --peers) of any member.
        #[arg(long, global = true, default_value = "127.0.0.1:8000")]
        peer: String,
        /// Seconds to keep retrying (a change under way, a learner catching up).
        #[arg(long, global = true, default_value_t = 30.0)]
        timeout: f64,
    },
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Print each member: id, role, peer and client addresses, how far its log matches
    /// the leader's.
    List,
    /// Add node ID as a learner: it receives the log but does not vote. Start it first
    /// with --join (see the README).
    Add {
        id: usize,
        /// Where its peers reach it (its own --peers entry).
        peer_addr: std::net::SocketAddr,
        /// Where its clients reach it (UDP).
        client_addr: std::net::SocketAddr,
    },
    /// Make learner ID a voter once its log has caught up with the leader's (waits for
    /// that, up to --timeout).
    Promote { id: usize },
    /// Remove node ID (a leader hands leadership over first); then stop it.
    Remove { id: usize },
    /// Hand leadership to voter ID (default: the one whose log matches furthest) and wait
    /// until it leads.
    Transfer { id: Option<usize> },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Save a snapshot of a live node (its applied state at one log index, taken without
    /// stopping writes) into FILE; FILE appears only once the whole snapshot is in.
    Save {
        file: std::path::PathBuf,
        /// The node's client address, HOST:PORT (backups are served over TCP on it).
        #[arg(long, default_value = "127.0.0.1:9000")]
        server: String,
    },
    /// Install the snapshot in FILE into DIR, which must be empty or absent; a node
    /// started on DIR (or each node of a new cluster, all restored from FILE) begins there.
    Restore {
        file: std::path::PathBuf,
        #[arg(long)]
        data_dir: std::path::PathBuf,
    },
}

#[derive(clap::Args)]
struct Target {
    /// Server address(es), HOST:PORT, comma-separated for a cluster.
    #[arg(long, default_value = "127.0.0.1:9000")]
    server: String,
    /// Seconds to keep retrying before giving up.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

impl Target {
    fn connect(&self) -> Result<Client, ExitCode> {
        let servers = resolve_servers(&self.server).map_err(fail)?;
        let options = ClientOptions {
            deadline: Duration::from_secs_f64(self.timeout.max(0.05)),
            ..ClientOptions::default()
        };
        Client::connect_cluster(&servers, options).map_err(fail)
    }
}

/// Exit code for any failure of a client command (no answer, refused, server failure).
const EXIT_ERROR: u8 = 2;

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("ocean-liner: {e}");
    ExitCode::from(EXIT_ERROR)
}

fn main() -> ExitCode {
    // `--config FILE` settings go in before the command line's flags, which override them.
    let flags: std::collections::BTreeSet<String> =
        <ServerConfig as clap::Args>::augment_args(clap::Command::new("serve"))
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
    let args = match server::config_file::expand(std::env::args_os().collect(), &flags) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("ocean-liner: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);

    match cli.command {
        None => serve(cli.server),
        Some(Command::Serve(config)) => serve(config),
        Some(Command::Bench(args)) => match bench::run_and_print(&args) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(format!("{e:#}")),
        },
        Some(Command::Snapshot(command)) => snapshot_command(command),
        Some(Command::UdpCeiling {
            listen,
            threads,
            duration,
        }) => {
            let duration = match duration {
                Some(d) if d > 0.0 && d.is_finite() => Some(Duration::from_secs_f64(d)),
                Some(_) => return fail("--duration must be a positive number of seconds"),
                None => None,
            };
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            match bench::echo::serve(listen, threads as usize, duration, stop) {
                Ok(n) => {
                    println!("answered {n} requests");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("{e:#}")),
            }
        }
        Some(Command::Plot { dir }) => match bench::plot::plot_dir(&dir) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("{e:#}")),
        },
        Some(Command::Member {
            command,
            peer,
            timeout,
        }) => member_command(command, &peer, timeout),
        Some(Command::Top {
            target,
            interval,
            count,
            no_clear,
        }) => match resolve_servers(&target.server) {
            Ok(servers) if interval > 0.0 && interval.is_finite() => {
                ocean_liner::client::top::run(
                    &servers,
                    Duration::from_secs_f64(interval),
                    count,
                    !no_clear,
                );
                ExitCode::SUCCESS
            }
            Ok(_) => fail("--interval must be a positive number of seconds"),
            Err(e) => fail(e),
        },
        Some(Command::Doctor { data_dir }) => {
            let findings = ocean_liner::doctor::examine(data_dir.as_deref());
            print!("{}", ocean_liner::doctor::render(&findings));
            let fatal = findings
                .iter()
                .any(|f| f.severity == ocean_liner::doctor::Severity::Fatal);
            if fatal {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Some(Command::Tune { print: _, data_dir }) => {
            let findings = ocean_liner::doctor::examine(data_dir.as_deref());
            print!("{}", ocean_liner::doctor::tune_script(&findings));
            ExitCode::SUCCESS
        }
        Some(command) => client_command(command),
    }
}

fn snapshot_command(command: SnapshotCommand) -> ExitCode {
    let result = match command {
        SnapshotCommand::Save { file, server } => resolve_servers(&server)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .and_then(|servers| {
                let server = *servers
                    .first()
                    .ok_or_else(|| anyhow::anyhow!("no server address given"))?;
                ocean_liner::backup::save(server, &file)
            })
            .map(|r| format!("saved {r} into {}", file.display())),
        SnapshotCommand::Restore { file, data_dir } => {
            ocean_liner::backup::restore(&file, &data_dir)
                .map(|r| format!("restored {r} into {}", data_dir.display()))
        }
    };
    match result {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{e:#}")),
    }
}

fn member_command(command: MemberCommand, peer: &str, timeout: f64) -> ExitCode {
    use ocean_liner::client::member;
    use ocean_liner::consensus::membership::Change;
    use ocean_liner::ids::NodeId;
    use ocean_liner::server::admin::AdminRequest;
    let peer = match resolve_servers(peer).map(|s| s.first().copied()) {
        Ok(Some(p)) => p,
        Ok(None) => return fail("no --peer address given"),
        Err(e) => return fail(e),
    };
    if !(timeout > 0.0 && timeout.is_finite()) {
        return fail("--timeout must be a positive number of seconds");
    }
    let timeout = Duration::from_secs_f64(timeout);
    let id = |k: usize| NodeId::from_index(k);
    let result = match command {
        MemberCommand::List => member::list(peer, timeout).map(|l| member::render(&l)),
        MemberCommand::Transfer { id: target } => {
            member::transfer(peer, target.map(id), timeout).map(|s| s + "\n")
        }
        MemberCommand::Add {
            id: k,
            peer_addr,
            client_addr,
        } => member::ask(
            peer,
            &AdminRequest::Change(Change::AddLearner {
                id: id(k),
                peer_addr,
                client_addr,
            }),
            timeout,
        ),
        MemberCommand::Promote { id: k } => member::ask(
            peer,
            &AdminRequest::Change(Change::Promote { id: id(k) }),
            timeout,
        ),
        MemberCommand::Remove { id: k } => member::ask(
            peer,
            &AdminRequest::Change(Change::Remove { id: id(k) }),
            timeout,
        ),
    };
    match result {
        Ok(text) => {
            let text = text.strip_prefix("OK ").unwrap_or(&text);
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{e:#}")),
    }
}

fn serve(config: ServerConfig) -> ExitCode {
    match server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ocean-liner: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn client_command(command: Command) -> ExitCode {
    let run = |target: &Target, f: &mut dyn FnMut(&mut Client) -> Result<ExitCode, ExitCode>| {
        let mut client = match target.connect() {
            Ok(c) => c,
            Err(code) => return code,
        };
        f(&mut client).unwrap_or_else(|code| code)
    };
    match command {
        Command::Set { key, value, target } => run(&target, &mut |c| {
            c.set(&key, value.as_bytes()).map_err(fail)?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Get { key, target } => run(&target, &mut |c| match c.get(&key).map_err(fail)? {
            Some(value) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&value);
                let _ = out.write_all(b"\n");
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("ocean-liner: key {key:?} not found");
                Ok(ExitCode::from(1))
            }
        }),
        Command::Del { key, target } => run(&target, &mut |c| {
            c.delete(&key).map_err(fail)?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Stats { target, json } => run(&target, &mut |c| {
            let text = c.stats().map_err(fail)?;
            if json {
                println!("{}", ocean_liner::client::stats_json(&text));
            } else {
                print!("{text}");
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Ping { target } => run(&target, &mut |c| {
            let rtt = c.ping().map_err(fail)?;
            println!(
                "pong from {} in {:.0} us",
                c.current_server(),
                rtt.as_secs_f64() * 1e6
            );
            Ok(ExitCode::SUCCESS)
        }),
        Command::Serve(_)
        | Command::Bench(_)
        | Command::Snapshot(_)
        | Command::Member { .. }
        | Command::Plot { .. }
        | Command::UdpCeiling { .. }
        | Command::Doctor { .. }
        | Command::Top { .. }
        | Command::Tune { .. } => {
            unreachable!("handled in main")
        }
    }
}
