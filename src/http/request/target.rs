//! Request-target forms (RFC 9112 §3.2): origin-form (`/path?query`) for every method,
//! absolute-form (`http://host/path`) for every method, asterisk-form (`*`) only for
//! OPTIONS, authority-form (`host:port`) only for CONNECT. Anything else is refused.

use crate::http::HttpError;

/// Checks that `target` is a form `method` may use. A well-formed CONNECT is refused with
/// 501: forklift serves apps and does not tunnel.
pub(super) fn check(method: &[u8], target: &[u8]) -> Result<(), HttpError> {
    if method == b"CONNECT" {
        return if is_authority_form(target) {
            Err(HttpError::MethodNotImplemented)
        } else {
            Err(bad("CONNECT needs a host:port target"))
        };
    }
    match target.first() {
        Some(b'/') => Ok(()),
        Some(b'*') if target.len() == 1 => {
            if method == b"OPTIONS" {
                Ok(())
            } else {
                Err(bad("asterisk-form is only for OPTIONS"))
            }
        }
        _ if is_absolute_form(target) => Ok(()),
        _ if is_authority_form(target) => Err(bad("authority-form is only for CONNECT")),
        _ => Err(bad("invalid request-target")),
    }
}

fn bad(why: &str) -> HttpError {
    HttpError::Malformed(why.into())
}

/// `scheme "://" authority [path-abempty] ["?" query]` with a valid, non-empty
/// authority: the absolute-form a client sends to a proxy (RFC 9112 §3.2.2). Other
/// absolute URIs (`urn:x`, `mailto:a@b`) name nothing an HTTP server could serve.
fn is_absolute_form(t: &[u8]) -> bool {
    let Some(colon) = t.iter().position(|&b| b == b':') else {
        return false;
    };
    let scheme = &t[..colon];
    let scheme_ok = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let Some(rest) = t[colon + 1..].strip_prefix(b"//") else {
        return false;
    };
    let authority_len = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    // `userinfo@` is allowed before the host (deprecated, but well-formed).
    let host_port = match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => {
            let userinfo_ok = authority[..at]
                .iter()
                .all(|&b| is_reg_name_byte(b) || b == b':');
            if !userinfo_ok {
                return false;
            }
            &authority[at + 1..]
        }
        None => authority,
    };
    scheme_ok && is_host_port(host_port, false)
}

/// `host ":" port` (RFC 9112 §3.2.3), the host a name, an IPv4 address or a bracketed
/// IP literal, the port digits. No userinfo, path or query.
fn is_authority_form(t: &[u8]) -> bool {
    is_host_port(t, true)
}

/// `host [":" port]`, with the port required when `need_port`.
fn is_host_port(hp: &[u8], need_port: bool) -> bool {
    let (host, port) = if hp.first() == Some(&b'[') {
        let Some(close) = hp.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &hp[1..close];
        let literal_ok = !inner.is_empty()
            && inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        if !literal_ok {
            return false;
        }
        match &hp[close + 1..] {
            [] => (&hp[..close + 1], None),
            [b':', port @ ..] => (&hp[..close + 1], Some(port)),
            _ => return false,
        }
    } else {
        match hp.iter().rposition(|&b| b == b':') {
            Some(colon) => (&hp[..colon], Some(&hp[colon + 1..])),
            None => (hp, None),
        }
    };
    let host_ok =
        !host.is_empty() && (host[0] == b'[' || host.iter().all(|&b| is_reg_name_byte(b)));
    let port_ok = match port {
        Some(p) => p.iter().all(u8::is_ascii_digit) && !(need_port && p.is_empty()),
        None => !need_port,
    };
    host_ok && port_ok
}

/// unreserved / pct-encoded / sub-delims (RFC 3986 `reg-name`; also covers IPv4).
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(method: &str, target: &str) -> u16 {
        match check(method.as_bytes(), target.as_bytes()) {
            Ok(()) => 200,
            Err(e) => e.status(),
        }
    }

    #[test]
    fn forms_by_method() {
        assert_eq!(status("GET", "/a?b"), 200);
        assert_eq!(status("GET", "http://example.com/foo?q=1"), 200);
        assert_eq!(status("GET", "https://user:pw@example.com:8080"), 200);
        assert_eq!(status("GET", "http://[::1]:8080/foo"), 200);
        assert_eq!(status("OPTIONS", "*"), 200);
        assert_eq!(status("CONNECT", "example.com:443"), 501);
        assert_eq!(status("CONNECT", "[::1]:443"), 501);
    }

    #[test]
    fn refused_forms() {
        for (m, t) in [
            ("GET", "*"),
            ("GET", "example.com:443"),
            ("GET", "foo/bar"),
            ("GET", "http:/x"),
            ("GET", "http:///x"),
            ("GET", "1http://x/"),
            ("PUT", "s://]ufd/:"),
            ("GET", "http://a b/"),
            ("GET", "http://[::1/"),
            ("GET", "http://h:8x/"),
            ("GET", "*x"),
            ("CONNECT", "domain.example"),
            ("CONNECT", "/path"),
            ("CONNECT", "host:"),
            ("CONNECT", "user@host:25"),
            ("OPTIONS", "example.com:80"),
        ] {
            assert_eq!(status(m, t), 400, "{m} {t}");
        }
    }
}
