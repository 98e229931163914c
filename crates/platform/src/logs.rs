//! Reading instance logs in pieces: the last lines first, then whatever was written since, with a
//! cursor the caller hands back each time. The engine behind [`crate::Platform::read_logs`] for
//! platforms whose instances write log files on this machine.
//!
//! A cursor holds, per instance, which file it read (device and inode), the byte offset it reached,
//! and a fingerprint of the bytes just before that offset. A later call goes on from the offset
//! only if the file is still the same one, has not shrunk, and still holds those bytes there;
//! otherwise (a new version's instance writes a new file, `logrotate` truncated or replaced it)
//! it reads the file from its start and says so ([`LogChunk::restarted`] and a note). Reads are
//! capped per call ([`MAX_BYTES_PER_CALL`], [`MAX_LINES_PER_CALL`]); the answer says when the cap
//! cut it ([`LogChunk::truncated`]) and the cursor then points where the next call goes on.
//!
//! Only complete lines are returned: the unfinished last line of a running instance waits for
//! its newline, so a line is never shown in two pieces. An instance that no longer runs will not
//! finish it, so its last line is shown as it is. Lines longer than [`MAX_LINE_BYTES`] are cut
//! and end with [`LINE_CUT_MARKER`]; bytes that are not UTF-8 show as U+FFFD.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::PlatformError;

/// The most lines one call returns, over all the instances of a slot.
pub const MAX_LINES_PER_CALL: usize = 10_000;

/// About the most bytes of log one call reads, over all the instances of a slot: each instance
/// gets an equal share, but never less than twice [`MAX_LINE_BYTES`], so that every call makes
/// progress whatever the lines' length (with 64 instances a call may read 2 MiB).
pub const MAX_BYTES_PER_CALL: usize = 1024 * 1024;

/// Lines longer than this (in bytes, without the newline) are cut, the rest of the line dropped.
/// A program that prints a megabyte without a newline must not make every answer a megabyte.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Ends a line cut at [`MAX_LINE_BYTES`].
pub const LINE_CUT_MARKER: &str = " … [line cut at 16 KiB]";

/// How many bytes before a cursor's offset its fingerprint covers: enough that a file rewritten
/// past the offset (truncated, then written again) is noticed, cheap to read.
const FINGERPRINT_BYTES: u64 = 32;

/// Which part of a slot's logs a [`crate::Platform::read_logs`] call wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRequest {
    /// Without `after`: how many of the last lines of each instance's log to return (0: none,
    /// only a cursor to follow from). Ignored with `after`.
    pub tail_lines: usize,
    /// The cursor of the previous answer: only the lines written since.
    pub after: Option<LogCursor>,
}

/// Where a read of a slot's logs ended, per instance; opaque to callers, who hand it back
/// unchanged. Its text form (`Display`, `FromStr`) uses only URL-safe characters
/// (`0-9 a-f . -`), so it goes into a query string as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCursor {
    files: Vec<FilePosition>,
}

/// How far the log of one instance was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FilePosition {
    instance: u32,
    dev: u64,
    ino: u64,
    offset: u64,
    /// FNV-1a of the [`FINGERPRINT_BYTES`] bytes before `offset` (fewer at the start).
    fingerprint: u64,
    /// `offset` is inside a line that was shown cut: the rest of it, up to its newline, is
    /// skipped.
    in_cut_line: bool,
}

/// The version of the cursor's text form, its first field: a later format can tell old cursors
/// and restart them cleanly instead of misreading them.
const CURSOR_FORMAT: &str = "1";

impl fmt::Display for LogCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(CURSOR_FORMAT)?;
        for p in &self.files {
            write!(
                f,
                ".{:x}-{:x}-{:x}-{:x}-{:x}-{}",
                p.instance,
                p.dev,
                p.ino,
                p.offset,
                p.fingerprint,
                u8::from(p.in_cut_line)
            )?;
        }
        Ok(())
    }
}

impl FromStr for LogCursor {
    type Err = PlatformError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| PlatformError::BadCursor {
            reason: reason.to_string(),
        };
        let mut parts = text.split('.');
        if parts.next() != Some(CURSOR_FORMAT) {
            return Err(bad("it does not start with a known cursor format"));
        }
        let mut files: Vec<FilePosition> = Vec::new();
        for part in parts {
            let fields: Vec<&str> = part.split('-').collect();
            let [instance, dev, ino, offset, fingerprint, cut] = fields.as_slice() else {
                return Err(bad("one of its entries does not have six fields"));
            };
            let hex = |field: &str| {
                u64::from_str_radix(field, 16).map_err(|_| bad("a field is not a hexadecimal number"))
            };
            let position = FilePosition {
                instance: u32::try_from(hex(instance)?)
                    .map_err(|_| bad("an instance number is too large"))?,
                dev: hex(dev)?,
                ino: hex(ino)?,
                offset: hex(offset)?,
                fingerprint: hex(fingerprint)?,
                in_cut_line: match *cut {
                    "0" => false,
                    "1" => true,
                    _ => return Err(bad("a flag is neither 0 nor 1")),
                },
            };
            if files.iter().any(|f| f.instance == position.instance) {
                return Err(bad("it names an instance twice"));
            }
            files.push(position);
        }
        Ok(LogCursor { files })
    }
}

impl Serialize for LogCursor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LogCursor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One line of an instance's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The instance's index in its slot (0, 1, ...).
    pub instance: u32,
    /// The version the instance runs.
    pub version: String,
    /// The line without its newline (nor a `\r` before it); cut lines end with
    /// [`LINE_CUT_MARKER`].
    pub text: String,
}

/// What a [`crate::Platform::read_logs`] call found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// The version whose logs these are; `None` when the slot has no log at all.
    pub version: Option<String>,
    /// How many instances' logs were read.
    pub instances: usize,
    /// The lines, instance by instance (instance 0's first), each instance's in the order it
    /// wrote them. Without timestamps in the files the instances cannot be interleaved
    /// faithfully.
    pub lines: Vec<LogLine>,
    /// Hand it back as [`LogRequest::after`] for the lines written after these.
    pub cursor: LogCursor,
    /// The per-call cap cut the answer. In a tail: earlier lines were left out. After a cursor:
    /// more lines wait; ask again at once.
    pub truncated: bool,
    /// At least one log was read from its start because the cursor did not fit it: a new
    /// version's instance, an instance the cursor did not know, a file truncated or replaced.
    pub restarted: bool,
    /// Sentences for a person: which log restarted and why, which could not be read.
    pub notes: Vec<String>,
}

/// One instance's log file, as a platform knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSource {
    pub instance: u32,
    pub version: String,
    pub path: PathBuf,
    /// No process writes to the file any more (the instance exited or was stopped): its
    /// unfinished last line will not be finished, so it is shown as it is.
    pub finished: bool,
}

/// Reads `sources` as `request` asks. A log that cannot be read is mentioned in the notes
/// (and keeps its old cursor position, so a passing failure loses nothing); the others are read
/// all the same.
pub fn read_logs(sources: &[LogSource], request: &LogRequest) -> LogChunk {
    let shares = sources.len().max(1);
    let budget = Budget {
        bytes: (MAX_BYTES_PER_CALL / shares).max(2 * MAX_LINE_BYTES),
        lines: (MAX_LINES_PER_CALL / shares).max(1),
    };
    let mut chunk = LogChunk {
        version: sources.first().map(|s| s.version.clone()),
        instances: sources.len(),
        lines: Vec::new(),
        cursor: LogCursor::default(),
        truncated: false,
        restarted: false,
        notes: Vec::new(),
    };
    for source in sources {
        let previous = request
            .after
            .as_ref()
            .and_then(|c| c.files.iter().find(|f| f.instance == source.instance));
        match read_one(source, request, previous, budget, &mut chunk) {
            Ok(position) => chunk.cursor.files.push(position),
            Err(e) => {
                chunk.notes.push(format!(
                    "instance {}: cannot read its log {}: {e}",
                    source.instance,
                    source.path.display()
                ));
                if let Some(previous) = previous {
                    chunk.cursor.files.push(*previous);
                }
            }
        }
    }
    chunk
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    bytes: usize,
    lines: usize,
}

/// Reads one instance's log into `chunk`; the position reached.
fn read_one(
    source: &LogSource,
    request: &LogRequest,
    previous: Option<&FilePosition>,
    budget: Budget,
    chunk: &mut LogChunk,
) -> std::io::Result<FilePosition> {
    let file = File::open(&source.path)?;
    let meta = file.metadata()?;
    let (dev, ino, len) = (meta.dev(), meta.ino(), meta.len());
    let mut reader = Reader {
        source,
        file: &file,
        len,
        budget,
        emitted: 0,
        lines: &mut chunk.lines,
    };
    let (offset, in_cut_line, truncated) = match &request.after {
        None => reader.tail(request.tail_lines)?,
        Some(_) => {
            // Where to go on from, or why the log is read from its start instead.
            let resume = match previous {
                None => Err("new since the cursor: reading its log from its start".to_string()),
                Some(p) if (p.dev, p.ino) != (dev, ino) => Err(format!(
                    "a new log file (version {}): reading it from its start",
                    source.version
                )),
                Some(p) if p.offset > len => Err(
                    "its log shrank (truncated, e.g. by logrotate's copytruncate): reading it from its start"
                        .to_string(),
                ),
                Some(p) if fingerprint(&file, p.offset)? != p.fingerprint => Err(
                    "its log was rewritten before the cursor's position: reading it from its start"
                        .to_string(),
                ),
                Some(p) => Ok(p),
            };
            match resume {
                Ok(p) => reader.forward(p.offset, p.in_cut_line)?,
                Err(reason) => {
                    chunk.restarted = true;
                    chunk
                        .notes
                        .push(format!("instance {}: {reason}", source.instance));
                    reader.forward(0, false)?
                }
            }
        }
    };
    chunk.truncated |= truncated;
    Ok(FilePosition {
        instance: source.instance,
        dev,
        ino,
        offset,
        fingerprint: fingerprint(&file, offset)?,
        in_cut_line,
    })
}

/// Reads lines of one file into `lines`, within a budget.
struct Reader<'a> {
    source: &'a LogSource,
    file: &'a File,
    len: u64,
    budget: Budget,
    emitted: usize,
    lines: &'a mut Vec<LogLine>,
}

/// Where a read ended: (offset, inside a cut line, the budget cut it).
type ReadEnd = (u64, bool, bool);

impl Reader<'_> {
    /// From `start` on, as far as the budget goes. `in_cut_line`: `start` is inside a line
    /// already shown cut, whose rest is skipped.
    fn forward(&mut self, start: u64, mut in_cut_line: bool) -> std::io::Result<ReadEnd> {
        let end = self.len.min(start.saturating_add(self.budget.bytes as u64));
        let buf = read_range(self.file, start, end)?;
        let mut pos = 0;
        while let Some(newline) = memchr(&buf[pos..]) {
            if in_cut_line {
                in_cut_line = false;
            } else if self.emitted == self.budget.lines {
                return Ok((start + pos as u64, false, true));
            } else {
                self.emit(&buf[pos..pos + newline], false);
            }
            pos += newline + 1;
        }
        let more_in_file = end < self.len;
        let (pos, in_cut_line, truncated) = self.rest(&buf, pos, in_cut_line, more_in_file);
        Ok((start + pos as u64, in_cut_line, truncated))
    }

    /// The last `n` lines, as many as the budget holds.
    fn tail(&mut self, n: usize) -> std::io::Result<ReadEnd> {
        let start = self.len.saturating_sub(self.budget.bytes as u64);
        // One byte more before the region tells whether it begins at a line's start.
        let read_from = start.saturating_sub(1);
        let raw = read_range(self.file, read_from, self.len)?;
        let (at_line_start, buf) = if start == 0 {
            (true, &raw[..])
        } else {
            (raw.first() == Some(&b'\n'), raw.get(1..).unwrap_or_default())
        };
        // The region's first line began before it: its start is unknown, so it is skipped.
        let first = if at_line_start {
            0
        } else {
            match memchr(buf) {
                Some(newline) => newline + 1,
                // The whole region is the inside of one huge line: nothing to show but that it
                // was left out.
                None => return Ok((self.len, true, n > 0)),
            }
        };
        let complete_end = buf[first..]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(first, |i| first + i + 1);
        let complete: Vec<&[u8]> = if complete_end > first {
            buf[first..complete_end - 1].split(|b| *b == b'\n').collect()
        } else {
            Vec::new()
        };
        let wanted = n.min(self.budget.lines);
        let shown = &complete[complete.len().saturating_sub(wanted)..];
        for line in shown {
            self.emit(line, false);
        }
        let earlier_left_out = shown.len() < n && (start > 0 || complete.len() > shown.len());
        if n == 0 {
            // Only a cursor: the unfinished last line, if any, is shown when it is finished.
            return Ok((start + complete_end as u64, false, false));
        }
        let (pos, in_cut_line, cut) = self.rest(buf, complete_end, false, false);
        Ok((start + pos as u64, in_cut_line, earlier_left_out || cut))
    }

    /// What to do with the bytes after the last newline of `buf` (from `pos`): the start of a
    /// line not finished yet. Returns (position in `buf` reached, inside a cut line, the
    /// budget cut the read).
    fn rest(&mut self, buf: &[u8], pos: usize, in_cut_line: bool, more_in_file: bool) -> (usize, bool, bool) {
        let rest = &buf[pos..];
        let budget_left = self.emitted < self.budget.lines;
        if rest.len() > MAX_LINE_BYTES {
            // Too long to wait for its end: shown cut now, its rest skipped later.
            if in_cut_line {
                return (buf.len(), true, more_in_file);
            }
            if !budget_left {
                return (pos, false, true);
            }
            self.emit(rest, true);
            return (buf.len(), true, more_in_file);
        }
        if more_in_file {
            // The budget ended inside this line; the next call reads it whole.
            return (pos, in_cut_line, true);
        }
        if self.source.finished && !rest.is_empty() {
            // Nothing will finish it: shown as it is.
            if in_cut_line {
                return (buf.len(), false, false);
            }
            if !budget_left {
                return (pos, false, true);
            }
            self.emit(rest, false);
            return (buf.len(), false, false);
        }
        (pos, in_cut_line, false)
    }

    fn emit(&mut self, line: &[u8], force_cut: bool) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = if force_cut || line.len() > MAX_LINE_BYTES {
            let mut text = String::from_utf8_lossy(cut_at_char_boundary(line, MAX_LINE_BYTES)).into_owned();
            text.push_str(LINE_CUT_MARKER);
            text
        } else {
            String::from_utf8_lossy(line).into_owned()
        };
        self.emitted += 1;
        self.lines.push(LogLine {
            instance: self.source.instance,
            version: self.source.version.clone(),
            text,
        });
    }
}

/// The first `max` bytes of `bytes`, fewer if that would split a UTF-8 character (a cut
/// character would show as U+FFFD, as if the program had printed garbage).
fn cut_at_char_boundary(bytes: &[u8], max: usize) -> &[u8] {
    if bytes.len() <= max {
        return bytes;
    }
    let mut end = max;
    // A continuation byte (0b10xxxxxx) at `end` belongs to a character begun before it; a
    // character has at most three of them.
    while end > max.saturating_sub(3) && bytes[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    &bytes[..end]
}

fn memchr(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|b| *b == b'\n')
}

/// The bytes of `file` in `start..end` (fewer if it shrank meanwhile).
fn read_range(file: &File, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    let len = usize::try_from(end.saturating_sub(start)).unwrap_or(usize::MAX);
    let mut buf = vec![0; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], start + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// FNV-1a of the bytes before `offset`; see [`FilePosition::fingerprint`].
fn fingerprint(file: &File, offset: u64) -> std::io::Result<u64> {
    let bytes = read_range(file, offset.saturating_sub(FINGERPRINT_BYTES), offset)?;
    Ok(bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let cursor = LogCursor {
            files: vec![
                FilePosition {
                    instance: 0,
                    dev: 2049,
                    ino: 123_456,
                    offset: 99,
                    fingerprint: u64::MAX,
                    in_cut_line: false,
                },
                FilePosition {
                    instance: 3,
                    dev: 1,
                    ino: 2,
                    offset: 0,
                    fingerprint: 7,
                    in_cut_line: true,
                },
            ],
        };
        let text = cursor.to_string();
        assert!(
            text.chars()
                .all(|c| c.is_ascii_hexdigit() || c == '.' || c == '-'),
            "{text}"
        );
        assert_eq!(text.parse::<LogCursor>().unwrap(), cursor);
        assert_eq!("1".parse::<LogCursor>().unwrap(), LogCursor::default());
        for bad in [
            "",
            "2",
            "1.0-1-2-3",
            "1.x-1-2-3-4-0",
            "1.0-1-2-3-4-2",
            "1.0-1-2-3-4-0.0-1-2-3-4-0",
        ] {
            let err = bad.parse::<LogCursor>().unwrap_err();
            assert!(matches!(err, PlatformError::BadCursor { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn long_lines_are_cut_at_a_character_boundary() {
        let text = "é".repeat(10);
        // 20 bytes; a cut at 5 would split the third é.
        assert_eq!(cut_at_char_boundary(text.as_bytes(), 5), "éé".as_bytes());
        assert_eq!(cut_at_char_boundary(text.as_bytes(), 6), "ééé".as_bytes());
        assert_eq!(cut_at_char_boundary(b"abc", 5), b"abc");
    }
}
