//! A reader of CRI log files for the tests, following the kubelet's parser:
//! every line is `<time> <stream> <tag> <content>`, the time is RFC 3339 with
//! optional fraction, an `F` record's content is followed by a newline when
//! shown, a `P` record's is not.

use std::time::SystemTime;

use super::{LogStream, LogTag};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub time: SystemTime,
    pub stream: LogStream,
    pub tag: LogTag,
    pub content: Vec<u8>,
}

/// Parses a whole file's bytes; panics on anything the kubelet would not
/// parse, including a last record without its newline.
pub fn parse_records(bytes: &[u8]) -> Vec<Record> {
    assert!(
        bytes.is_empty() || bytes.ends_with(b"\n"),
        "torn last record in {:?}",
        String::from_utf8_lossy(bytes)
    );
    bytes
        .split_inclusive(|&byte| byte == b'\n')
        .map(|line| parse_record(&line[..line.len() - 1]))
        .collect()
}

fn parse_record(line: &[u8]) -> Record {
    let describe = || String::from_utf8_lossy(line).into_owned();
    let mut fields = line.splitn(4, |&byte| byte == b' ');
    let time = fields.next().expect("a timestamp");
    let time = parse_timestamp(std::str::from_utf8(time).expect("an ASCII timestamp"));
    let stream = match fields.next() {
        Some(b"stdout") => LogStream::Stdout,
        Some(b"stderr") => LogStream::Stderr,
        _ => panic!("bad stream in {:?}", describe()),
    };
    let tag = match fields.next() {
        Some(b"F") => LogTag::Full,
        Some(b"P") => LogTag::Partial,
        _ => panic!("bad tag in {:?}", describe()),
    };
    let content = fields
        .next()
        .unwrap_or_else(|| panic!("no content separator in {:?}", describe()));
    Record {
        time,
        stream,
        tag,
        content: content.to_vec(),
    }
}

/// Parses an RFC 3339 timestamp with an independent implementation.
pub fn parse_timestamp(text: &str) -> SystemTime {
    let parsed =
        chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|err| panic!("{text:?}: {err}"));
    assert_eq!(parsed.offset().local_minus_utc(), 0, "{text} is not UTC");
    assert!(text.ends_with('Z'), "{text} does not end with Z");
    SystemTime::from(parsed)
}

/// What `kubectl logs` shows of one stream.
pub fn reassemble(records: &[Record], stream: LogStream) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records.iter().filter(|record| record.stream == stream) {
        out.extend_from_slice(&record.content);
        if record.tag == LogTag::Full {
            out.push(b'\n');
        }
    }
    out
}

/// Both streams' text, each record as `"<stream> <tag> <content>"`.
pub fn summary(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|record| {
            format!(
                "{} {} {}",
                record.stream.as_str(),
                record.tag.as_str(),
                String::from_utf8_lossy(&record.content)
            )
        })
        .collect()
}

/// Reads and parses a log file.
pub fn read_records(path: &std::path::Path) -> Vec<Record> {
    let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    parse_records(&bytes)
}
