//! The RESP door's command table, as COMMAND, COMMAND INFO, COMMAND COUNT, COMMAND LIST and
//! COMMAND DOCS report it (the RESP2 shapes of Redis 7: name, arity, flags, first key, last
//! key, key step, then ACL categories, tips, key specs and subcommands, left empty).
//! Client libraries read the arity and key positions to route and to validate; the table
//! lists exactly the commands the door serves.

use crate::resp;

/// One command the door serves.
pub struct CommandInfo {
    pub name: &'static str,
    /// Redis's arity: the argument count with the name, negative for "at least".
    pub arity: i64,
    pub flags: &'static [&'static str],
    pub first_key: i64,
    pub last_key: i64,
    pub step: i64,
    pub group: &'static str,
    pub summary: &'static str,
}

const fn cmd(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    group: &'static str,
    summary: &'static str,
) -> CommandInfo {
    CommandInfo {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
        group,
        summary,
    }
}

const READ: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write", "denyoom"];
const WRITE_FAST: &[&str] = &["write", "denyoom", "fast"];
const CONNECTION: &[&str] = &["noscript", "loading", "stale", "fast"];
const ONE: (i64, i64, i64) = (1, 1, 1);
const ALL: (i64, i64, i64) = (1, -1, 1);
const NONE: (i64, i64, i64) = (0, 0, 0);

/// Every command the door serves, by name.
pub const COMMANDS: &[CommandInfo] = &[
    cmd("get", 2, READ, ONE, "string", "Returns the value of a key."),
    cmd(
        "set",
        -3,
        WRITE,
        ONE,
        "string",
        "Sets a key's value (NX, XX, GET, KEEPTTL).",
    ),
    cmd(
        "setnx",
        3,
        WRITE_FAST,
        ONE,
        "string",
        "Sets a key's value only when it is absent.",
    ),
    cmd(
        "getset",
        3,
        WRITE_FAST,
        ONE,
        "string",
        "Sets a key's value and returns the previous one.",
    ),
    cmd(
        "getdel",
        2,
        &["write", "fast"],
        ONE,
        "string",
        "Returns a key's value and deletes it.",
    ),
    cmd(
        "incr",
        2,
        WRITE_FAST,
        ONE,
        "string",
        "Adds 1 to a key's integer.",
    ),
    cmd(
        "decr",
        2,
        WRITE_FAST,
        ONE,
        "string",
        "Subtracts 1 from a key's integer.",
    ),
    cmd(
        "incrby",
        3,
        WRITE_FAST,
        ONE,
        "string",
        "Adds a number to a key's integer.",
    ),
    cmd(
        "decrby",
        3,
        WRITE_FAST,
        ONE,
        "string",
        "Subtracts a number from a key's integer.",
    ),
    cmd(
        "mset",
        -3,
        WRITE,
        (1, -1, 2),
        "string",
        "Sets several keys, in one log entry.",
    ),
    cmd(
        "mget",
        -2,
        READ,
        ALL,
        "string",
        "Returns the values of several keys.",
    ),
    cmd("del", -2, &["write"], ALL, "generic", "Deletes keys."),
    cmd(
        "unlink",
        -2,
        &["write", "fast"],
        ALL,
        "generic",
        "Deletes keys.",
    ),
    cmd(
        "exists",
        -2,
        READ,
        ALL,
        "generic",
        "Counts the keys that exist.",
    ),
    cmd(
        "dbsize",
        1,
        READ,
        NONE,
        "server",
        "Returns the number of keys.",
    ),
    cmd(
        "ping",
        -1,
        &["fast"],
        NONE,
        "connection",
        "Returns PONG or the message.",
    ),
    cmd(
        "echo",
        2,
        &["fast"],
        NONE,
        "connection",
        "Returns the message.",
    ),
    cmd(
        "select",
        2,
        CONNECTION,
        NONE,
        "connection",
        "Selects database 0 (the only one).",
    ),
    cmd(
        "hello",
        -1,
        CONNECTION,
        NONE,
        "connection",
        "Handshakes in RESP2.",
    ),
    cmd(
        "client",
        -2,
        CONNECTION,
        NONE,
        "connection",
        "CLIENT SETNAME, GETNAME, ID, SETINFO.",
    ),
    cmd(
        "quit",
        -1,
        CONNECTION,
        NONE,
        "connection",
        "Closes the connection.",
    ),
    cmd(
        "reset",
        1,
        CONNECTION,
        NONE,
        "connection",
        "Resets the connection's state.",
    ),
    cmd(
        "info",
        -1,
        &["loading", "stale"],
        NONE,
        "server",
        "Returns information about the server.",
    ),
    cmd(
        "command",
        -1,
        &["loading", "stale"],
        NONE,
        "server",
        "Describes the commands.",
    ),
];

/// The command named `name` (any case), if the door serves it.
pub fn find(name: &[u8]) -> Option<&'static CommandInfo> {
    COMMANDS
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

/// One command's COMMAND INFO entry.
pub fn encode_info(out: &mut Vec<u8>, c: &CommandInfo) {
    resp::array_header(out, Some(10));
    resp::bulk(out, Some(c.name.as_bytes()));
    resp::integer(out, c.arity);
    resp::array_header(out, Some(c.flags.len()));
    for f in c.flags {
        resp::simple(out, f);
    }
    resp::integer(out, c.first_key);
    resp::integer(out, c.last_key);
    resp::integer(out, c.step);
    for _ in 0..4 {
        resp::array_header(out, Some(0));
    }
}

/// One command's COMMAND DOCS entry: its name, then its docs as a flat map.
pub fn encode_docs(out: &mut Vec<u8>, c: &CommandInfo) {
    resp::bulk(out, Some(c.name.as_bytes()));
    resp::array_header(out, Some(4));
    resp::bulk(out, Some(b"summary"));
    resp::bulk(out, Some(c.summary.as_bytes()));
    resp::bulk(out, Some(b"group"));
    resp::bulk(out, Some(c.group.as_bytes()));
}

/// COMMAND and its subcommands; `args` are the arguments after COMMAND.
pub fn answer(out: &mut Vec<u8>, args: &[&[u8]]) {
    let sub = args.first().map(|s| s.to_ascii_uppercase());
    let names = args.get(1..).unwrap_or_default();
    match sub.as_deref() {
        None => {
            resp::array_header(out, Some(COMMANDS.len()));
            for c in COMMANDS {
                encode_info(out, c);
            }
        }
        Some(b"COUNT") if names.is_empty() => resp::integer(out, COMMANDS.len() as i64),
        Some(b"LIST") if names.is_empty() => {
            resp::array_header(out, Some(COMMANDS.len()));
            for c in COMMANDS {
                resp::bulk(out, Some(c.name.as_bytes()));
            }
        }
        Some(b"INFO") => {
            let wanted: Vec<Option<&CommandInfo>> = if names.is_empty() {
                COMMANDS.iter().map(Some).collect()
            } else {
                names.iter().map(|n| find(n)).collect()
            };
            resp::array_header(out, Some(wanted.len()));
            for c in wanted {
                match c {
                    Some(c) => encode_info(out, c),
                    None => resp::array_header(out, None),
                }
            }
        }
        Some(b"DOCS") => {
            let wanted: Vec<&CommandInfo> = if names.is_empty() {
                COMMANDS.iter().collect()
            } else {
                names.iter().filter_map(|n| find(n)).collect()
            };
            resp::array_header(out, Some(wanted.len() * 2));
            for c in wanted {
                encode_docs(out, c);
            }
        }
        Some(_) => resp::error(
            out,
            &format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try COMMAND HELP.",
                String::from_utf8_lossy(args.first().copied().unwrap_or_default())
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::{Limits, Parsed, Reply, parse_reply};

    fn reply(args: &[&[u8]]) -> Reply {
        let mut out = Vec::new();
        answer(&mut out, args);
        match parse_reply(&out, &Limits::default()) {
            Ok(Parsed::Done(r, n)) if n == out.len() => r,
            other => panic!("not one whole reply: {other:?}"),
        }
    }

    #[test]
    fn the_table_answers_in_redis_shapes() {
        assert_eq!(reply(&[b"count"]), Reply::Integer(COMMANDS.len() as i64));
        let Reply::Array(Some(all)) = reply(&[]) else {
            panic!("COMMAND is an array")
        };
        assert_eq!(all.len(), COMMANDS.len());
        let Reply::Array(Some(info)) = reply(&[b"INFO", b"mset", b"nosuch", b"GET"]) else {
            panic!("COMMAND INFO is an array")
        };
        assert_eq!(info.len(), 3);
        let Reply::Array(Some(mset)) = &info[0] else {
            panic!("an entry is an array")
        };
        assert_eq!(mset.len(), 10);
        assert_eq!(mset[0], Reply::Bulk(Some(b"mset".to_vec())));
        assert_eq!(mset[1], Reply::Integer(-3));
        assert_eq!(
            &mset[3..6],
            &[Reply::Integer(1), Reply::Integer(-1), Reply::Integer(2)]
        );
        assert_eq!(info[1], Reply::Array(None), "unknown commands are nil");
        let Reply::Array(Some(docs)) = reply(&[b"DOCS", b"incr"]) else {
            panic!("COMMAND DOCS is an array")
        };
        assert_eq!(docs.len(), 2);
        assert!(matches!(reply(&[b"NOPE"]), Reply::Error(_)));
    }

    #[test]
    fn every_name_is_unique_and_lower_case() {
        for (i, c) in COMMANDS.iter().enumerate() {
            assert_eq!(c.name, c.name.to_lowercase());
            assert!(COMMANDS[..i].iter().all(|d| d.name != c.name), "{}", c.name);
            assert!(find(c.name.to_uppercase().as_bytes()).is_some());
        }
    }
}
