//! AFL++ harness: `ocean-liner-fuzz TARGET` runs one target of
//! `ocean_liner::verify::fuzz` in AFL's persistent mode (built and driven by
//! `tools/fuzz.sh`). `ocean-liner-fuzz --list` prints the target names.

use ocean_liner::verify::fuzz::TARGETS;

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    if name == "--list" {
        for (name, _) in TARGETS {
            println!("{name}");
        }
        return;
    }
    let Some(&(_, target)) = TARGETS.iter().find(|(n, _)| *n == name) else {
        eprintln!("usage: ocean-liner-fuzz TARGET | --list");
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        target(data);
    });
}
