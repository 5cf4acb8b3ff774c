//! SPDY/3 name/value header blocks and their zlib compression.
//!
//! Uncompressed, a block is a 32-bit count of pairs, then for each pair a
//! 32-bit length and the name, a 32-bit length and the value (all big
//! endian). Names are lowercase and unique within a block; several values of
//! one name are joined with NUL bytes into one value, and each of them must
//! be non-empty unless the whole value is empty (SPDY/3 section 2.6.10).
//!
//! Compressed, all the blocks one endpoint sends over a session form a
//! single zlib stream that starts with the SPDY/3 preset dictionary
//! ([`super::dictionary`]) and ends each block with a sync flush: so one
//! [`HeaderEncoder`] per session for the outgoing direction and one
//! [`HeaderDecoder`] for the incoming one, each fed every block in order.
//! The first block's zlib header asks for the dictionary, which the decoder
//! answers with [`super::dictionary::DICTIONARY`] after checking its id.
//!
//! The decoder never inflates more than [`HeaderLimits::max_block_size`]
//! bytes of one block and never trusts a count: a pair needs at least 8
//! bytes, so a count larger than the bytes present (or than
//! [`HeaderLimits::max_pairs`]) is refused before anything is allocated for
//! it. Errors that leave the zlib stream out of step with the peer's
//! ([`HeaderError::is_session_fatal`]) end the session; the others are the
//! fault of one block's content and end only its stream.

use std::collections::HashSet;

use bytes::{BufMut, Bytes};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use thiserror::Error;

use super::dictionary::{DICTIONARY, DICTIONARY_ID};

/// Bounds on one incoming header block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Largest decompressed block, in bytes.
    pub max_block_size: usize,
    /// Largest number of name/value pairs in a block.
    pub max_pairs: usize,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        HeaderLimits {
            max_block_size: 256 * 1024,
            max_pairs: 1024,
        }
    }
}

/// What was wrong with a header block or a header.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HeaderError {
    #[error("SPDY header block: zlib compression failed: {0}")]
    Compression(String),
    #[error("SPDY header block: zlib decompression failed: {0}")]
    Decompression(String),
    #[error("SPDY header block asks for zlib dictionary {id:#010x}, not the SPDY/3 one")]
    WrongDictionary { id: u32 },
    #[error("SPDY header block decompresses to more than {max} bytes")]
    BlockTooLarge { max: usize },
    #[error("SPDY header block ended the zlib stream, which must span the session")]
    CompressionStreamEnded,
    #[error("SPDY header decompression failed earlier in this session")]
    DecoderBroken,
    #[error("SPDY header block truncated: {what} needs {needed} bytes, {remaining} remain")]
    Truncated {
        what: &'static str,
        needed: usize,
        remaining: usize,
    },
    #[error("SPDY header block announces {count} pairs, over the limit of {max}")]
    TooManyPairs { count: u32, max: usize },
    #[error("SPDY header block announces {count} pairs in {remaining} bytes")]
    CountExceedsBlock { count: u32, remaining: usize },
    #[error("SPDY header block has {count} bytes after its last pair")]
    TrailingBytes { count: usize },
    #[error("SPDY header name is empty")]
    EmptyName,
    #[error("SPDY header name {name:?} has characters other than lowercase visible ASCII")]
    InvalidName { name: String },
    #[error("SPDY header name {name:?} appears twice")]
    DuplicateName { name: String },
    #[error("SPDY header {name:?} has a value that is not UTF-8")]
    ValueNotUtf8 { name: String },
    #[error("SPDY header {name:?} has an empty value among several")]
    EmptyValueInList { name: String },
    #[error("SPDY header {name:?} value contains a NUL byte")]
    NulInValue { name: String },
}

impl HeaderError {
    /// Whether the error leaves the session's decompression context unusable
    /// (the session must end), as opposed to one block's content being bad
    /// (only its stream is refused).
    pub fn is_session_fatal(&self) -> bool {
        matches!(
            self,
            HeaderError::Compression(_)
                | HeaderError::Decompression(_)
                | HeaderError::WrongDictionary { .. }
                | HeaderError::BlockTooLarge { .. }
                | HeaderError::CompressionStreamEnded
                | HeaderError::DecoderBroken
        )
    }
}

/// The headers of a SYN_STREAM, SYN_REPLY or HEADERS frame: names in the
/// order they were added, each with one or more values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, Vec<String>)>,
}

fn valid_name(name: &[u8]) -> Result<(), HeaderError> {
    if name.is_empty() {
        return Err(HeaderError::EmptyName);
    }
    if name
        .iter()
        .any(|&b| !(0x21..=0x7E).contains(&b) || b.is_ascii_uppercase())
    {
        return Err(HeaderError::InvalidName {
            name: String::from_utf8_lossy(name).into_owned(),
        });
    }
    Ok(())
}

impl Headers {
    pub fn new() -> Self {
        Headers::default()
    }

    /// Headers from (name, value) pairs, see [`Headers::append`].
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, HeaderError> {
        let mut headers = Headers::new();
        for (name, value) in pairs {
            headers.append(name, value)?;
        }
        Ok(headers)
    }

    /// Adds a value to `name` (lowercased first, as SPDY requires). The name
    /// must be visible ASCII; the value may not contain NUL (the value
    /// separator); an empty value can only be the name's only value.
    pub fn append(&mut self, name: &str, value: impl Into<String>) -> Result<(), HeaderError> {
        let name = name.to_ascii_lowercase();
        valid_name(name.as_bytes())?;
        let value = value.into();
        if value.contains('\0') {
            return Err(HeaderError::NulInValue { name });
        }
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => {
                if value.is_empty() || values.iter().any(String::is_empty) {
                    return Err(HeaderError::EmptyValueInList { name });
                }
                values.push(value);
            }
            None => self.entries.push((name, vec![value])),
        }
        Ok(())
    }

    /// The first value of `name` (compared without regard to ASCII case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).first().map(String::as_str)
    }

    /// All values of `name`; empty when absent.
    pub fn get_all(&self, name: &str) -> &[String] {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, values)| values.as_slice())
            .unwrap_or(&[])
    }

    /// (name, values) in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Number of distinct names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The uncompressed name/value block.
    pub fn to_block(&self) -> Vec<u8> {
        let size = 4 + self
            .entries
            .iter()
            .map(|(n, v)| 8 + n.len() + v.iter().map(|s| s.len() + 1).sum::<usize>())
            .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.put_u32(self.entries.len() as u32);
        for (name, values) in &self.entries {
            out.put_u32(name.len() as u32);
            out.put_slice(name.as_bytes());
            let value_len = values.iter().map(String::len).sum::<usize>() + values.len() - 1;
            out.put_u32(value_len as u32);
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    out.put_u8(0);
                }
                out.put_slice(value.as_bytes());
            }
        }
        out
    }

    /// Parses and validates an uncompressed name/value block.
    pub fn from_block(block: &[u8], limits: &HeaderLimits) -> Result<Self, HeaderError> {
        let mut reader = BlockReader { rest: block };
        let count = reader.u32("the pair count")?;
        if count as usize > limits.max_pairs {
            return Err(HeaderError::TooManyPairs {
                count,
                max: limits.max_pairs,
            });
        }
        // Each pair takes at least two 32-bit lengths.
        if count as usize > reader.rest.len() / 8 {
            return Err(HeaderError::CountExceedsBlock {
                count,
                remaining: reader.rest.len(),
            });
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut seen = HashSet::with_capacity(count as usize);
        for _ in 0..count {
            let name = reader.field("a header name")?;
            valid_name(name)?;
            // Valid names are ASCII.
            let name_str = String::from_utf8_lossy(name).into_owned();
            if !seen.insert(name) {
                return Err(HeaderError::DuplicateName { name: name_str });
            }
            let value = reader.field("a header value")?;
            let Ok(value) = std::str::from_utf8(value) else {
                return Err(HeaderError::ValueNotUtf8 { name: name_str });
            };
            let values: Vec<String> = if value.is_empty() {
                vec![String::new()]
            } else {
                let values: Vec<String> = value.split('\0').map(str::to_owned).collect();
                if values.iter().any(String::is_empty) {
                    return Err(HeaderError::EmptyValueInList { name: name_str });
                }
                values
            };
            entries.push((name_str, values));
        }
        if !reader.rest.is_empty() {
            return Err(HeaderError::TrailingBytes {
                count: reader.rest.len(),
            });
        }
        Ok(Headers { entries })
    }
}

struct BlockReader<'a> {
    rest: &'a [u8],
}

impl<'a> BlockReader<'a> {
    fn u32(&mut self, what: &'static str) -> Result<u32, HeaderError> {
        let Some((head, rest)) = self.rest.split_first_chunk::<4>() else {
            return Err(HeaderError::Truncated {
                what,
                needed: 4,
                remaining: self.rest.len(),
            });
        };
        self.rest = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn field(&mut self, what: &'static str) -> Result<&'a [u8], HeaderError> {
        let len = self.u32(what)? as usize;
        if len > self.rest.len() {
            return Err(HeaderError::Truncated {
                what,
                needed: len,
                remaining: self.rest.len(),
            });
        }
        let (field, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(field)
    }
}

/// The compressing side of one session direction.
pub struct HeaderEncoder {
    compress: Compress,
    dictionary_set: bool,
}

impl Default for HeaderEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderEncoder {
    pub fn new() -> Self {
        HeaderEncoder {
            compress: Compress::new(Compression::default(), true),
            dictionary_set: false,
        }
    }

    /// Compresses `headers` as the next block of this session.
    pub fn encode(&mut self, headers: &Headers) -> Result<Bytes, HeaderError> {
        self.compress_block(&headers.to_block())
    }

    /// Compresses an already serialized block (ends with a sync flush).
    pub fn compress_block(&mut self, block: &[u8]) -> Result<Bytes, HeaderError> {
        if !self.dictionary_set {
            self.compress
                .set_dictionary(&DICTIONARY)
                .map_err(|e| HeaderError::Compression(e.to_string()))?;
            self.dictionary_set = true;
        }
        let mut out = Vec::with_capacity(block.len() / 2 + 64);
        let mut input = block;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = self.compress.total_in();
            self.compress
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| HeaderError::Compression(e.to_string()))?;
            let consumed = (self.compress.total_in() - before) as usize;
            input = &input[consumed..];
            // A sync flush is complete once all input is taken and deflate
            // stopped with output space left.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(Bytes::from(out));
            }
        }
    }
}

/// The decompressing side of one session direction.
pub struct HeaderDecoder {
    decompress: Decompress,
    limits: HeaderLimits,
    broken: bool,
}

impl HeaderDecoder {
    pub fn new(limits: HeaderLimits) -> Self {
        HeaderDecoder {
            decompress: Decompress::new(true),
            limits,
            broken: false,
        }
    }

    /// Decompresses and parses the next block of this session.
    pub fn decode(&mut self, compressed: &[u8]) -> Result<Headers, HeaderError> {
        let block = self.decompress_block(compressed)?;
        Headers::from_block(&block, &self.limits)
    }

    /// Inflates the next block, at most [`HeaderLimits::max_block_size`]
    /// bytes of it. Any error here is session-fatal, and so are all later
    /// calls.
    pub fn decompress_block(&mut self, compressed: &[u8]) -> Result<Vec<u8>, HeaderError> {
        if self.broken {
            return Err(HeaderError::DecoderBroken);
        }
        let result = self.inflate(compressed);
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    fn inflate(&mut self, compressed: &[u8]) -> Result<Vec<u8>, HeaderError> {
        let max = self.limits.max_block_size;
        // One byte over the limit tells "too large" from "exactly the limit".
        let cap = max.saturating_add(1);
        let mut out = Vec::with_capacity(cap.min(compressed.len().saturating_mul(4).max(256)));
        let mut input = compressed;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= cap {
                    return Err(HeaderError::BlockTooLarge { max });
                }
                let grow = out.capacity().max(256).min(cap - out.len());
                out.reserve_exact(grow);
            }
            let (in_before, out_before) = (self.decompress.total_in(), self.decompress.total_out());
            let mut dictionary_supplied = false;
            match self
                .decompress
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => return Err(HeaderError::CompressionStreamEnded),
                Ok(Status::Ok | Status::BufError) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ID) => {
                        self.decompress
                            .set_dictionary(&DICTIONARY)
                            .map_err(|e| HeaderError::Decompression(e.to_string()))?;
                        dictionary_supplied = true;
                    }
                    Some(id) => return Err(HeaderError::WrongDictionary { id }),
                    None => return Err(HeaderError::Decompression(e.to_string())),
                },
            }
            let consumed = (self.decompress.total_in() - in_before) as usize;
            let produced = self.decompress.total_out() - out_before;
            input = &input[consumed..];
            if out.len() > max {
                return Err(HeaderError::BlockTooLarge { max });
            }
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            if consumed == 0 && produced == 0 && !dictionary_supplied && out.len() < out.capacity()
            {
                return Err(HeaderError::Decompression(format!(
                    "no progress with {} bytes of input left",
                    input.len()
                )));
            }
        }
    }
}
