//! `--config FILE`: server settings from a TOML file, under the flags given on the command
//! line.
//!
//! A key is a server flag's long name without its dashes (`batch-window-ms = 10`,
//! `peers = ["10.0.0.1:7000", "10.0.0.2:7000"]`, `no-pin = true`). Precedence, highest
//! first: a flag on the command line, the file, the flag's default. The file's settings
//! are turned into flags placed before the command line's, and the parser lets a later
//! occurrence of a flag override an earlier one; an unknown key is refused by name.

use anyhow::{Context, bail};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;

/// `args` (the process's, program name first) with the settings of the `--config` file
/// it names, if any, inserted where the server's flags go. `flags` are the long names
/// the server takes.
pub fn expand(args: Vec<OsString>, flags: &BTreeSet<String>) -> anyhow::Result<Vec<OsString>> {
    // Where the server's flags start: after the program name, or after `serve`.
    let at = match args.get(1).and_then(|a| a.to_str()) {
        Some("serve") => 2,
        Some(first) if !first.starts_with('-') => return Ok(args),
        _ => 1,
    };
    let mut path = None;
    for (i, a) in args.iter().enumerate().skip(at) {
        let Some(a) = a.to_str() else { continue };
        if a == "--config" {
            path = Some(
                args.get(i + 1)
                    .context("--config needs a file name")?
                    .clone(),
            );
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(OsString::from(p));
        }
    }
    let Some(path) = path else {
        return Ok(args);
    };
    let from_file = settings(Path::new(&path), flags)?;
    let mut out = args[..at].to_vec();
    out.extend(from_file);
    out.extend(args[at..].iter().cloned());
    Ok(out)
}

/// The flags a config file stands for.
fn settings(path: &Path, flags: &BTreeSet<String>) -> anyhow::Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    let mut out = Vec::new();
    for (key, value) in table {
        if key == "config" || !flags.contains(&key) {
            bail!(
                "config file {}: unknown setting '{key}' (settings are the server's flags \
                 without their dashes, e.g. batch-window-ms = 10; see ocean-liner --help)",
                path.display()
            );
        }
        let flag = format!("--{key}");
        let text = match value {
            toml::Value::Boolean(true) => {
                out.push(OsString::from(flag));
                continue;
            }
            toml::Value::Boolean(false) => continue,
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Array(items) => {
                let mut parts = Vec::new();
                for item in items {
                    match item {
                        toml::Value::String(s) => parts.push(s),
                        toml::Value::Integer(n) => parts.push(n.to_string()),
                        other => bail!(
                            "config file {}: '{key}' holds a {} in its list; use strings",
                            path.display(),
                            other.type_str()
                        ),
                    }
                }
                parts.join(",")
            }
            other => bail!(
                "config file {}: '{key}' is a {}; use a string, number, boolean or list",
                path.display(),
                other.type_str()
            ),
        };
        out.push(OsString::from(flag));
        out.push(OsString::from(text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> BTreeSet<String> {
        ["batch-window-ms", "peers", "no-pin", "cores", "data-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn file_settings_go_before_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ol.toml");
        std::fs::write(
            &file,
            "batch-window-ms = 10\nno-pin = true\ncores = 2\npeers = [\"a:1\", \"b:2\"]\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let out = expand(args(&["ol", "--config", f, "--cores", "3"]), &flags()).unwrap();
        let out: Vec<&str> = out.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            out,
            [
                "ol",
                "--batch-window-ms",
                "10",
                "--cores",
                "2",
                "--no-pin",
                "--peers",
                "a:1,b:2",
                "--config",
                f,
                "--cores",
                "3"
            ]
        );
        let out = expand(args(&["ol", "serve", &format!("--config={f}")]), &flags()).unwrap();
        assert_eq!(out[1], "serve");
        assert_eq!(out[2], "--batch-window-ms");
        // Other subcommands are left alone.
        let same = args(&["ol", "get", "k", "--config", f]);
        assert_eq!(expand(same.clone(), &flags()).unwrap(), same);
    }

    #[test]
    fn unknown_keys_and_bad_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ol.toml");
        std::fs::write(&file, "batch-windw-ms = 10\n").unwrap();
        let f = file.to_str().unwrap();
        let e = expand(args(&["ol", "--config", f]), &flags()).unwrap_err();
        assert!(
            format!("{e:#}").contains("unknown setting 'batch-windw-ms'"),
            "{e:#}"
        );
        std::fs::write(&file, "cores = = 2\n").unwrap();
        let e = expand(args(&["ol", "--config", f]), &flags()).unwrap_err();
        assert!(format!("{e:#}").contains("not valid TOML"), "{e:#}");
        let e = expand(args(&["ol", "--config", "/nonexistent.toml"]), &flags()).unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot read the config file"),
            "{e:#}"
        );
    }
}
