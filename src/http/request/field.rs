//! Field rules shared by the header and trailer sections: which names are singletons,
//! which may never appear in trailers, and which look-alike names are refused.

/// Fields that must not be sent in a trailer section (RFC 9110 §6.5.1): message framing,
/// routing, request modifiers, authentication, and how to process the content. A
/// trailer carrying one of them is refused. (`Trailer` itself is on RFC 9110's list too,
/// but it only announces trailers; like every other trailer it is dropped.)
const FORBIDDEN_IN_TRAILER: &[&[u8]] = &[
    b"content-length",
    b"transfer-encoding",
    b"host",
    b"connection",
    b"keep-alive",
    b"te",
    b"upgrade",
    b"expect",
    b"max-forwards",
    b"cache-control",
    b"if-match",
    b"if-none-match",
    b"if-modified-since",
    b"if-unmodified-since",
    b"if-range",
    b"range",
    b"authorization",
    b"proxy-authorization",
    b"cookie",
    b"content-type",
    b"content-encoding",
    b"content-range",
];

/// True for a field name that may not be sent as a trailer.
pub(super) fn forbidden_in_trailer(name: &[u8]) -> bool {
    FORBIDDEN_IN_TRAILER
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name))
}

/// True for a name that is a framing field spelt with `_` for `-` (`Content_Length`,
/// `transfer_encoding`). Such names are legal tokens, but gateways that map names to
/// CGI-style variables (`HTTP_CONTENT_LENGTH`) cannot tell them from the real field,
/// which makes them a request-smuggling lever; they are refused.
pub(super) fn is_framing_alias(name: &[u8]) -> bool {
    let real: &[u8] = match name.len() {
        14 => b"content-length",
        17 => b"transfer-encoding",
        _ => return false,
    };
    name.contains(&b'_')
        && name
            .iter()
            .zip(real)
            .all(|(&a, &r)| a.to_ascii_lowercase() == r || (a == b'_' && r == b'-'))
}

/// True for a byte allowed in a field value: HTAB, SP, visible ASCII, and obs-text
/// (0x80-0xFF). Other control characters (NUL, BEL, bare CR or LF, ...) and DEL are not.
pub(super) fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_aliases() {
        assert!(is_framing_alias(b"Content_Length"));
        assert!(is_framing_alias(b"TRANSFER_ENCODING"));
        assert!(!is_framing_alias(b"Content-Length"));
        assert!(!is_framing_alias(b"Content_Lengthx"));
        assert!(!is_framing_alias(b"X_Forwarded_For"));
    }

    #[test]
    fn trailer_names() {
        assert!(forbidden_in_trailer(b"Content-Length"));
        assert!(forbidden_in_trailer(b"HOST"));
        assert!(!forbidden_in_trailer(b"X-Checksum"));
        assert!(!forbidden_in_trailer(b"Server-Timing"));
    }

    #[test]
    fn value_bytes() {
        for b in [b'\t', b' ', b'a', b'~', 0x80, 0xff] {
            assert!(is_value_byte(b), "{b:#x}");
        }
        for b in [0u8, 0x07, b'\r', b'\n', 0x0b, 0x1f, 0x7f] {
            assert!(!is_value_byte(b), "{b:#x}");
        }
    }
}
