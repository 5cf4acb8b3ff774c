//! Turning a container's output bytes into CRI log records. Pure: the caller
//! passes the time, and the records are appended to a buffer it owns.

use std::time::{SystemTime, UNIX_EPOCH};

use super::LogStream;

/// The longest content of one record, containerd's default
/// `max_container_log_line_size`. Longer lines become several records.
pub const DEFAULT_MAX_LINE_SIZE: usize = 16 * 1024;

/// Whether a record ends its line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTag {
    /// `F`: the record ends a line.
    Full,
    /// `P`: the line goes on in the next record of the same stream (or never
    /// ended: the output stopped without a newline).
    Partial,
}

impl LogTag {
    /// The tag's letter in a CRI log record.
    pub fn as_str(self) -> &'static str {
        match self {
            LogTag::Full => "F",
            LogTag::Partial => "P",
        }
    }
}

/// Cuts each stream's bytes into lines and lines into records of at most the
/// maximum line size. Holds, per stream, the start of a line whose end has
/// not arrived yet: at most `max_line_size + 1` bytes (the extra byte is a
/// `\r` that may turn out to be the start of `\r\n`).
pub struct CriLogFormatter {
    max_line_size: usize,
    pending: [Vec<u8>; 2],
}

impl std::fmt::Debug for CriLogFormatter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Pending bytes are container output: their sizes, not their text.
        f.debug_struct("CriLogFormatter")
            .field("max_line_size", &self.max_line_size)
            .field("pending_stdout", &self.pending[0].len())
            .field("pending_stderr", &self.pending[1].len())
            .finish()
    }
}

impl Default for CriLogFormatter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE_SIZE)
    }
}

impl CriLogFormatter {
    /// A formatter cutting lines longer than `max_line_size` bytes (at least 1;
    /// there is no "unlimited": that would let one line grow without bound).
    pub fn new(max_line_size: usize) -> Self {
        Self {
            max_line_size: max_line_size.max(1),
            pending: [Vec::new(), Vec::new()],
        }
    }

    pub fn max_line_size(&self) -> usize {
        self.max_line_size
    }

    /// The bytes of `stream`'s current line that no record holds yet.
    pub fn pending(&self, stream: LogStream) -> &[u8] {
        &self.pending[stream.index()]
    }

    /// Takes `data` written by the container to `stream`, received at `now`,
    /// and appends the records it completes to `out`.
    pub fn push(&mut self, stream: LogStream, data: &[u8], now: SystemTime, out: &mut Vec<u8>) {
        let time = format_timestamp(now);
        let mut rest = data;
        while let Some(newline) = rest.iter().position(|&byte| byte == b'\n') {
            self.append(stream, &rest[..newline], &time, out);
            self.end_line(stream, &time, out);
            rest = &rest[newline + 1..];
        }
        self.append(stream, rest, &time, out);
    }

    /// The output has ended: appends each stream's unfinished line to `out`
    /// as `P` records (stdout's first).
    pub fn finish(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        if self.pending.iter().all(Vec::is_empty) {
            return;
        }
        let time = format_timestamp(now);
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let pending = &mut self.pending[stream.index()];
            for piece in pending.chunks(self.max_line_size) {
                write_record(out, &time, stream, LogTag::Partial, piece);
            }
            pending.clear();
        }
    }

    /// Adds bytes of a line (no `\n` among them) to the stream's pending
    /// line, writing a `P` record each time the line is known to be longer
    /// than the maximum.
    fn append(&mut self, stream: LogStream, mut bytes: &[u8], time: &str, out: &mut Vec<u8>) {
        let max = self.max_line_size;
        let pending = &mut self.pending[stream.index()];
        loop {
            let take = (max + 1 - pending.len()).min(bytes.len());
            pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            // One byte over the maximum: the line is longer than one record,
            // unless that byte is a '\r' that a '\n' may still follow.
            if pending.len() > max && (!bytes.is_empty() || pending[max] != b'\r') {
                write_record(out, time, stream, LogTag::Partial, &pending[..max]);
                pending.drain(..max);
            }
            if bytes.is_empty() {
                return;
            }
        }
    }

    /// A `\n` arrived: the pending line (without a `\r` just before the
    /// `\n`) becomes an `F` record, empty lines included.
    fn end_line(&mut self, stream: LogStream, time: &str, out: &mut Vec<u8>) {
        let pending = &mut self.pending[stream.index()];
        if pending.last() == Some(&b'\r') {
            pending.pop();
        }
        debug_assert!(pending.len() <= self.max_line_size);
        write_record(out, time, stream, LogTag::Full, pending);
        pending.clear();
    }
}

fn write_record(out: &mut Vec<u8>, time: &str, stream: LogStream, tag: LogTag, content: &[u8]) {
    out.reserve(time.len() + content.len() + 12);
    out.extend_from_slice(time.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(tag.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// `time` in UTC as Go's `time.RFC3339Nano` writes it, which is what
/// containerd writes and the kubelet parses: `2026-11-22T10:00:00.1234Z`
/// (nanoseconds without trailing zeros, no fraction on a whole second).
/// Times before 1970 do not occur in logs; they are written as the epoch.
pub fn format_timestamp(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_date(seconds / 86_400);
    let of_day = seconds % 86_400;
    let mut text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
    let nanos = since_epoch.subsec_nanos();
    if nanos != 0 {
        let digits = format!("{nanos:09}");
        text.push('.');
        text.push_str(digits.trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// The Gregorian (year, month, day) that is `days` days after 1970-01-01.
/// Counting years one by one is a few dozen steps for any date a log holds.
fn civil_date(mut days: u64) -> (u64, u64, u64) {
    let is_leap = |year: u64| {
        year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
    };
    let mut year = 1970;
    loop {
        let length = if is_leap(year) { 366 } else { 365 };
        if days < length {
            break;
        }
        days -= length;
        year += 1;
    }
    let february = if is_leap(year) { 29 } else { 28 };
    let months = [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut month = 1;
    for length in months {
        if days < length {
            break;
        }
        days -= length;
        month += 1;
    }
    (year, month, days + 1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pod::logs::testing::{parse_records, parse_timestamp, reassemble};

    use LogStream::{Stderr, Stdout};
    use LogTag::{Full, Partial};

    fn at(seconds: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(seconds, nanos)
    }

    /// 2026-11-22T10:00:00Z.
    const T0: u64 = 1_795_341_600;

    /// Pushes each `(stream, bytes)` in order, then returns the records as
    /// (stream, tag, content) triples.
    fn records(
        max: usize,
        pushes: &[(LogStream, &[u8])],
        finish: bool,
    ) -> Vec<(LogStream, LogTag, Vec<u8>)> {
        let mut formatter = CriLogFormatter::new(max);
        let mut out = Vec::new();
        for (stream, bytes) in pushes {
            formatter.push(*stream, bytes, at(T0, 0), &mut out);
        }
        if finish {
            formatter.finish(at(T0, 0), &mut out);
        }
        parse_records(&out)
            .into_iter()
            .map(|record| (record.stream, record.tag, record.content))
            .collect()
    }

    fn rec(stream: LogStream, tag: LogTag, content: &str) -> (LogStream, LogTag, Vec<u8>) {
        (stream, tag, content.as_bytes().to_vec())
    }

    #[test]
    fn timestamps_are_go_rfc3339nano_in_utc() {
        let cases = [
            (at(0, 0), "1970-01-01T00:00:00Z"),
            (at(T0, 123_456_789), "2026-11-22T10:00:00.123456789Z"),
            (at(T0, 500_000_000), "2026-11-22T10:00:00.5Z"),
            (at(T0, 1_000), "2026-11-22T10:00:00.000001Z"),
            (at(T0 + 3_599, 10), "2026-11-22T10:59:59.00000001Z"),
            (at(951_782_400, 0), "2000-02-29T00:00:00Z"),
            (at(1_709_164_800, 0), "2024-02-29T00:00:00Z"),
            (at(4_107_542_399, 0), "2100-02-28T23:59:59Z"),
            (at(4_107_542_400, 0), "2100-03-01T00:00:00Z"),
            (
                at(253_402_300_799, 999_999_999),
                "9999-12-31T23:59:59.999999999Z",
            ),
            (UNIX_EPOCH - Duration::from_secs(5), "1970-01-01T00:00:00Z"),
        ];
        for (time, expected) in cases {
            assert_eq!(format_timestamp(time), expected);
        }
    }

    #[test]
    fn timestamps_parse_back_to_the_same_instant() {
        // Every 37 days and 1h 1m 1s, with varied nanoseconds, 1970 to ~2100.
        let mut seconds = 0u64;
        let mut nanos = 0u32;
        while seconds < 4_200_000_000 {
            let time = at(seconds, nanos);
            let text = format_timestamp(time);
            assert_eq!(parse_timestamp(&text), time, "{text}");
            if let Some((_, fraction)) = text.trim_end_matches('Z').split_once('.') {
                assert!(!fraction.ends_with('0') && fraction.len() <= 9, "{text}");
            } else {
                assert_eq!(nanos, 0, "{text}");
            }
            seconds += 37 * 86_400 + 3_661;
            nanos = (nanos + 123_450_000) % 1_000_000_000;
        }
    }

    #[test]
    fn a_full_line_is_one_record() {
        let mut formatter = CriLogFormatter::default();
        let mut out = Vec::new();
        formatter.push(Stdout, b"hello world\n", at(T0, 42_000), &mut out);
        assert_eq!(out, b"2026-11-22T10:00:00.000042Z stdout F hello world\n");
        assert!(formatter.pending(Stdout).is_empty());
    }

    #[test]
    fn many_lines_in_one_chunk() {
        let got = records(100, &[(Stderr, b"one\ntwo\n\nfour\n")], false);
        assert_eq!(
            got,
            [
                rec(Stderr, Full, "one"),
                rec(Stderr, Full, "two"),
                rec(Stderr, Full, ""),
                rec(Stderr, Full, "four")
            ]
        );
    }

    #[test]
    fn a_line_split_across_chunks_is_one_record_timed_by_its_end() {
        let mut formatter = CriLogFormatter::default();
        let mut out = Vec::new();
        formatter.push(Stdout, b"hel", at(T0, 0), &mut out);
        formatter.push(Stdout, b"lo wor", at(T0 + 1, 0), &mut out);
        assert!(out.is_empty(), "nothing is written before the line ends");
        assert_eq!(formatter.pending(Stdout), b"hello wor");
        formatter.push(Stdout, b"ld\nnext", at(T0 + 2, 0), &mut out);
        assert_eq!(out, b"2026-11-22T10:00:02Z stdout F hello world\n");
        assert_eq!(formatter.pending(Stdout), b"next");
    }

    #[test]
    fn long_lines_become_partial_records_of_the_maximum_then_full() {
        let twenty = (&[(Stdout, &b"abcdefghijklmnopqrst\n"[..])], false);
        assert_eq!(
            records(8, twenty.0, twenty.1),
            [
                rec(Stdout, Partial, "abcdefgh"),
                rec(Stdout, Partial, "ijklmnop"),
                rec(Stdout, Full, "qrst")
            ]
        );
        // Exactly the maximum fits one record; one byte more does not.
        assert_eq!(
            records(8, &[(Stdout, b"abcdefgh\n")], false),
            [rec(Stdout, Full, "abcdefgh")]
        );
        assert_eq!(
            records(8, &[(Stdout, b"abcdefghi\n")], false),
            [rec(Stdout, Partial, "abcdefgh"), rec(Stdout, Full, "i")]
        );
        // A multiple of the maximum ends with a full-size F, not an empty one.
        assert_eq!(
            records(4, &[(Stdout, b"abcdefgh\n")], false),
            [rec(Stdout, Partial, "abcd"), rec(Stdout, Full, "efgh")]
        );
    }

    #[test]
    fn long_lines_are_cut_the_same_whatever_the_chunking() {
        let line = b"0123456789abcdefghijklmnopqrstuvwxyz\n";
        let whole = records(10, &[(Stdout, line)], false);
        let pushes: Vec<(LogStream, &[u8])> = line.chunks(3).map(|piece| (Stdout, piece)).collect();
        assert_eq!(records(10, &pushes, false), whole);
        let contents: Vec<&[u8]> = whole.iter().map(|(_, _, content)| &content[..]).collect();
        assert_eq!(
            contents,
            [&b"0123456789"[..], b"abcdefghij", b"klmnopqrst", b"uvwxyz"]
        );
    }

    #[test]
    fn crlf_line_endings_drop_the_carriage_return_only_at_the_end() {
        assert_eq!(
            records(100, &[(Stdout, b"dos\r\n")], false),
            [rec(Stdout, Full, "dos")]
        );
        assert_eq!(
            records(100, &[(Stdout, b"a\r"), (Stdout, b"\nb\r\n")], false),
            [rec(Stdout, Full, "a"), rec(Stdout, Full, "b")]
        );
        assert_eq!(
            records(100, &[(Stdout, b"a\rb\n")], false),
            [rec(Stdout, Full, "a\rb")]
        );
        assert_eq!(
            records(100, &[(Stdout, b"a\r\r\n")], false),
            [rec(Stdout, Full, "a\r")]
        );
        assert_eq!(
            records(100, &[(Stdout, b"\r\n")], false),
            [rec(Stdout, Full, "")]
        );
        // A '\r' just past the maximum waits for the next chunk: "\r\n"
        // ends the line, anything else makes it content of the next record.
        assert_eq!(
            records(4, &[(Stdout, b"abcd\r"), (Stdout, b"\n")], false),
            [rec(Stdout, Full, "abcd")]
        );
        assert_eq!(
            records(4, &[(Stdout, b"abcd\r"), (Stdout, b"e\n")], false),
            [rec(Stdout, Partial, "abcd"), rec(Stdout, Full, "\re")]
        );
    }

    #[test]
    fn empty_lines_are_full_records_with_empty_content() {
        let mut formatter = CriLogFormatter::default();
        let mut out = Vec::new();
        formatter.push(Stderr, b"\n\n", at(T0, 0), &mut out);
        assert_eq!(
            out,
            b"2026-11-22T10:00:00Z stderr F \n2026-11-22T10:00:00Z stderr F \n"
        );
    }

    #[test]
    fn stdout_and_stderr_partial_lines_do_not_mix() {
        assert_eq!(
            records(
                100,
                &[
                    (Stdout, b"out-"),
                    (Stderr, b"err-"),
                    (Stdout, b"1\n"),
                    (Stderr, b"2\n")
                ],
                false
            ),
            [rec(Stdout, Full, "out-1"), rec(Stderr, Full, "err-2")]
        );
        assert_eq!(
            records(
                4,
                &[(Stdout, b"abcdef"), (Stderr, b"x\n"), (Stdout, b"g\n")],
                false
            ),
            [
                rec(Stdout, Partial, "abcd"),
                rec(Stderr, Full, "x"),
                rec(Stdout, Full, "efg")
            ]
        );
    }

    #[test]
    fn finish_writes_unterminated_lines_as_partial() {
        assert_eq!(
            records(
                100,
                &[(Stderr, b"e1\nlast err"), (Stdout, b"last out")],
                true
            ),
            [
                rec(Stderr, Full, "e1"),
                rec(Stdout, Partial, "last out"),
                rec(Stderr, Partial, "last err")
            ]
        );
        assert_eq!(
            records(4, &[(Stdout, b"abcd\r")], true),
            [rec(Stdout, Partial, "abcd"), rec(Stdout, Partial, "\r")]
        );
        let mut formatter = CriLogFormatter::new(4);
        let mut out = Vec::new();
        formatter.push(Stdout, b"done\n", at(T0, 0), &mut out);
        out.clear();
        formatter.finish(at(T0, 0), &mut out);
        assert!(out.is_empty(), "nothing pending, nothing written");
        formatter.push(Stdout, b"x", at(T0, 0), &mut out);
        formatter.finish(at(T0, 0), &mut out);
        formatter.finish(at(T0, 0), &mut out);
        assert_eq!(
            parse_records(&out).len(),
            1,
            "finish twice writes the tail once"
        );
    }

    #[test]
    fn any_chunking_reads_back_as_the_written_bytes() {
        // Lines of 0..=30 bytes (some longer than the maximum of 7), some
        // ending in "\r\n", a stray '\r', fed in pseudo-random chunks with
        // stdout and stderr interleaved; the last line has no newline.
        let mut seed = 0x2545_f491_u32;
        let mut next = |bound: u32| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 16) % bound
        };
        let mut inputs = [Vec::new(), Vec::new()];
        for (index, input) in inputs.iter_mut().enumerate() {
            for line in 0..200u32 {
                let length = next(31);
                input.extend((0..length).map(|i| b"abc\rdefgh"[((i + line) % 9) as usize]));
                input.extend_from_slice(if next(3) == 0 { b"\r\n" } else { b"\n" });
            }
            input.extend_from_slice(if index == 0 {
                b"tail of stdout"
            } else {
                b"tail\r"
            });
        }
        let mut formatter = CriLogFormatter::new(7);
        let mut out = Vec::new();
        let mut offsets = [0, 0];
        while offsets != [inputs[0].len(), inputs[1].len()] {
            let index = next(2) as usize;
            let stream = [Stdout, Stderr][index];
            let end = (offsets[index] + next(20) as usize).min(inputs[index].len());
            formatter.push(
                stream,
                &inputs[index][offsets[index]..end],
                at(T0, 0),
                &mut out,
            );
            offsets[index] = end;
        }
        formatter.finish(at(T0, 0), &mut out);
        let records = parse_records(&out);
        assert!(records.iter().all(|record| record.content.len() <= 7));
        for (index, stream) in [Stdout, Stderr].into_iter().enumerate() {
            let expected = replace_crlf(&inputs[index]);
            assert_eq!(reassemble(&records, stream), expected, "{stream:?}");
        }
    }

    fn replace_crlf(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        for (i, &byte) in bytes.iter().enumerate() {
            if !(byte == b'\r' && bytes.get(i + 1) == Some(&b'\n')) {
                out.push(byte);
            }
        }
        out
    }
}
