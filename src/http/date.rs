//! The `Date` header, formatted once per second per thread instead of per response.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};

struct Cached {
    second: u64,
    line: [u8; 37],
}

thread_local! {
    static CACHE: RefCell<Cached> = const { RefCell::new(Cached { second: 0, line: [0; 37] }) };
}

/// Appends `Date: <IMF-fixdate>\r\n` for the current second.
pub fn put_date_header(out: &mut BytesMut) {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.second != second || c.line[0] == 0 {
            let text = format!("Date: {}\r\n", httpdate::fmt_http_date(now));
            c.line.copy_from_slice(&text.as_bytes()[..37]);
            c.second = second;
        }
        out.put_slice(&c.line);
    });
}
