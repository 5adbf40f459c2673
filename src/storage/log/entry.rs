//! One log entry on disk: the header (written at both ends), the commands region, and
//! the checks that tell a valid entry from a torn or damaged one. The byte layout is
//! drawn in the parent module's documentation.

use super::{LogIndex, Term};
use crate::le;
use crate::storage::command::{self, CommandRef, DecodeError};
use crate::storage::io::{AlignedBuf, PAGE_SIZE, align_up};
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_128;

/// Format magic and version of an entry header.
pub const ENTRY_MAGIC: [u8; 8] = *b"OLLOG\0\0\x01";
/// Bytes of a header.
pub const HEADER_SIZE: usize = 80;
/// Bytes reserved for a header at each end of an entry (keeps commands 32-byte aligned).
pub const HEADER_SLOT_SIZE: usize = 96;
const _: () = assert!(HEADER_SLOT_SIZE >= HEADER_SIZE);
const _: () = assert!(HEADER_SLOT_SIZE.is_multiple_of(command::COMMAND_ALIGN));
const _: () = assert!(2 * HEADER_SLOT_SIZE <= PAGE_SIZE);
/// The largest commands region of one entry.
pub const COMMAND_LENGTH_MAX: usize = 64 << 20;

const OFFSET_TERM: usize = 8;
const OFFSET_INDEX: usize = 16;
const OFFSET_NUM_COMMANDS: usize = 24;
const OFFSET_COMMAND_LENGTH: usize = 32;
const OFFSET_BATCH_FIRST: usize = 40;
const OFFSET_COMMANDS_HASH: usize = 48;
const OFFSET_HEADER_HASH: usize = OFFSET_COMMANDS_HASH + 16;
const _: () = assert!(OFFSET_HEADER_HASH + 16 == HEADER_SIZE);

/// A decoded entry header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub term: Term,
    pub log_index: LogIndex,
    pub num_commands: u64,
    pub command_length: u64,
    /// Index of the first entry of the write this entry was part of.
    pub batch_first_index: LogIndex,
    pub commands_hash: u128,
}

impl EntryHeader {
    /// Bytes the whole entry occupies on disk.
    pub fn entry_size(&self) -> usize {
        entry_size(self.command_length as usize)
    }

    /// Writes the header into `out[..HEADER_SIZE]`.
    pub fn encode(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&ENTRY_MAGIC);
        out[OFFSET_TERM..OFFSET_TERM + 8].copy_from_slice(&self.term.get().to_le_bytes());
        out[OFFSET_INDEX..OFFSET_INDEX + 8].copy_from_slice(&self.log_index.get().to_le_bytes());
        out[OFFSET_NUM_COMMANDS..OFFSET_NUM_COMMANDS + 8]
            .copy_from_slice(&self.num_commands.to_le_bytes());
        out[OFFSET_COMMAND_LENGTH..OFFSET_COMMAND_LENGTH + 8]
            .copy_from_slice(&self.command_length.to_le_bytes());
        out[OFFSET_BATCH_FIRST..OFFSET_BATCH_FIRST + 8]
            .copy_from_slice(&self.batch_first_index.get().to_le_bytes());
        out[OFFSET_COMMANDS_HASH..OFFSET_HEADER_HASH]
            .copy_from_slice(&self.commands_hash.to_le_bytes());
        let hash = xxh3_128(&out[..OFFSET_HEADER_HASH]);
        out[OFFSET_HEADER_HASH..HEADER_SIZE].copy_from_slice(&hash.to_le_bytes());
    }

    /// Decodes and verifies a header (magic, header hash, sane length).
    pub fn decode(bytes: &[u8]) -> Option<EntryHeader> {
        let header: &[u8; HEADER_SIZE] = bytes.first_chunk()?;
        if le::array(header, 0) != Some(ENTRY_MAGIC) {
            return None;
        }
        if le::u128_at(header, OFFSET_HEADER_HASH)? != xxh3_128(header.get(..OFFSET_HEADER_HASH)?) {
            return None;
        }
        let header = EntryHeader {
            term: Term(le::u64_at(header, OFFSET_TERM)?),
            log_index: LogIndex(le::u64_at(header, OFFSET_INDEX)?),
            num_commands: le::u64_at(header, OFFSET_NUM_COMMANDS)?,
            command_length: le::u64_at(header, OFFSET_COMMAND_LENGTH)?,
            batch_first_index: LogIndex(le::u64_at(header, OFFSET_BATCH_FIRST)?),
            commands_hash: le::u128_at(header, OFFSET_COMMANDS_HASH)?,
        };
        (header.command_length as usize <= COMMAND_LENGTH_MAX
            && header.log_index > LogIndex::ZERO
            && header.batch_first_index <= header.log_index)
            .then_some(header)
    }
}

/// Bytes an entry with `command_length` bytes of commands occupies on disk.
pub const fn entry_size(command_length: usize) -> usize {
    align_up(
        HEADER_SLOT_SIZE + command_length + HEADER_SLOT_SIZE,
        PAGE_SIZE,
    )
}

/// An entry read back from the log: its header and its bytes as on disk.
#[derive(Debug, Clone)]
pub struct Entry {
    pub header: EntryHeader,
    /// Byte offset of the entry in the log file.
    pub offset: u64,
    pub(super) bytes: Arc<AlignedBuf>,
}

impl Entry {
    /// The commands region.
    pub fn commands(&self) -> &[u8] {
        &self.bytes[HEADER_SLOT_SIZE..HEADER_SLOT_SIZE + self.header.command_length as usize]
    }

    /// Iterates over the entry's commands.
    pub fn iter(&self) -> command::Commands<'_> {
        command::Commands::new(self.commands())
    }

    /// The log-file byte offset of the command at `offset_in_commands`.
    pub fn command_file_offset(&self, offset_in_commands: usize) -> u64 {
        self.offset + (HEADER_SLOT_SIZE + offset_in_commands) as u64
    }

    /// Decodes the command that starts at log-file byte offset `file_offset`.
    pub fn command_at(&self, file_offset: u64) -> Result<CommandRef<'_>, DecodeError> {
        let relative = file_offset
            .checked_sub(self.offset + HEADER_SLOT_SIZE as u64)
            .unwrap_or(u64::MAX) as usize;
        command::decode_at(self.commands(), relative)
    }
}

/// An entry to append: the caller's commands region, already encoded.
#[derive(Debug, Clone, Copy)]
pub struct NewEntry<'a> {
    pub term: Term,
    pub log_index: LogIndex,
    pub num_commands: u64,
    pub commands: &'a [u8],
}

pub fn encode_entry(entry: &NewEntry<'_>, batch_first_index: LogIndex, out: &mut [u8]) {
    let header = EntryHeader {
        term: entry.term,
        log_index: entry.log_index,
        num_commands: entry.num_commands,
        command_length: entry.commands.len() as u64,
        batch_first_index,
        commands_hash: xxh3_128(entry.commands),
    };
    header.encode(&mut out[..HEADER_SIZE]);
    out[HEADER_SLOT_SIZE..HEADER_SLOT_SIZE + entry.commands.len()].copy_from_slice(entry.commands);
    let trailer = out.len() - HEADER_SLOT_SIZE;
    let (head, tail) = out.split_at_mut(trailer);
    tail[..HEADER_SIZE].copy_from_slice(&head[..HEADER_SIZE]);
}

pub(super) fn verify_body(header: &EntryHeader, bytes: &[u8]) -> Result<(), &'static str> {
    let size = header.entry_size();
    let commands = &bytes[HEADER_SLOT_SIZE..HEADER_SLOT_SIZE + header.command_length as usize];
    if xxh3_128(commands) != header.commands_hash {
        return Err("commands hash mismatch (torn or corrupt body)");
    }
    if bytes[size - HEADER_SLOT_SIZE..size - HEADER_SLOT_SIZE + HEADER_SIZE] != bytes[..HEADER_SIZE]
    {
        return Err("trailer differs from header");
    }
    check_commands(commands, header.num_commands)
        .map_err(|_| "commands do not decode to the count the header claims")
}

/// Checks that `commands` decodes to exactly `num_commands` commands.
pub(super) fn check_commands(commands: &[u8], num_commands: u64) -> Result<(), String> {
    match command::count(commands) {
        Ok(n) if n == num_commands => Ok(()),
        Ok(n) => Err(format!("it claims {num_commands} commands but holds {n}")),
        Err(e) => Err(format!("its commands do not decode: {e}")),
    }
}
