//! The zlib preset dictionary of SPDY/3 header blocks (SPDY/3 specification,
//! section 2.6.10.1).
//!
//! The specification defines it as a byte array: 65 header names and values,
//! each written as a 32-bit big-endian length followed by its bytes, then a
//! run of plain text (status codes and reason phrases, month and day names,
//! common values). It is built here at compile time from those two parts.
//! Both ends must use exactly these 1423 bytes: the zlib stream names the
//! dictionary by its Adler-32 (0xe3c6a7c2), and any difference makes every
//! header block of the session undecodable for the peer.

/// The length-prefixed part, in the specification's order.
const WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The plain-text part that follows the words, without separators.
const TAIL: &str = concat!(
    "100101201202205206300302303304305306307",
    "402405406407408409410411412413414415416417",
    "502504505",
    "203 Non-Authoritative Information",
    "204 No Content",
    "301 Moved Permanently",
    "400 Bad Request",
    "401 Unauthorized",
    "403 Forbidden",
    "404 Not Found",
    "500 Internal Server Error",
    "501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec ",
    "00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,",
    "public",
    "private",
    "max-age=",
    "gzip,deflate,sdch",
    "charset=utf-8",
    "charset=iso-8859-1,utf-,*,enq=0.",
);

const fn dictionary_len() -> usize {
    let mut len = TAIL.len();
    let mut i = 0;
    while i < WORDS.len() {
        len += 4 + WORDS[i].len();
        i += 1;
    }
    len
}

const fn build() -> [u8; DICTIONARY_LEN] {
    let mut out = [0u8; DICTIONARY_LEN];
    let mut at = 0;
    let mut i = 0;
    while i < WORDS.len() {
        let word = WORDS[i].as_bytes();
        let len = (word.len() as u32).to_be_bytes();
        let mut k = 0;
        while k < 4 {
            out[at] = len[k];
            at += 1;
            k += 1;
        }
        let mut k = 0;
        while k < word.len() {
            out[at] = word[k];
            at += 1;
            k += 1;
        }
        i += 1;
    }
    let tail = TAIL.as_bytes();
    let mut k = 0;
    while k < tail.len() {
        out[at] = tail[k];
        at += 1;
        k += 1;
    }
    out
}

/// Length of [`DICTIONARY`].
pub const DICTIONARY_LEN: usize = dictionary_len();

/// The SPDY/3 header compression dictionary.
pub const DICTIONARY: [u8; DICTIONARY_LEN] = build();

/// Adler-32 of [`DICTIONARY`]: the dictionary id in the zlib header of the
/// first header block of each direction.
pub const DICTIONARY_ID: u32 = 0xE3C6_A7C2;

#[cfg(test)]
mod tests {
    use super::*;

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in data {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn dictionary_has_the_specified_length_and_adler32() {
        assert_eq!(DICTIONARY_LEN, 1423);
        assert_eq!(adler32(&DICTIONARY), DICTIONARY_ID);
        assert_eq!(&DICTIONARY[..11], b"\0\0\0\x07options");
        assert_eq!(&DICTIONARY[DICTIONARY_LEN - 6..], b"enq=0.");
    }
}
