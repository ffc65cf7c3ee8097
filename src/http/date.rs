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

/// The current second of the wall clock, read from the kernel's coarse clock: a read of
/// the time the kernel last stored at its tick (a few milliseconds old at most), with
/// no hardware clock read, so cheap enough for every response.
fn coarse_second() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    match clock_gettime(ClockId::CLOCK_REALTIME_COARSE) {
        Ok(t) => t.tv_sec().max(0) as u64,
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

/// Appends `Date: <IMF-fixdate>\r\n` for the current second.
pub fn put_date_header(out: &mut BytesMut) {
    let second = coarse_second();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.second != second || c.line[0] == 0 {
            let at = UNIX_EPOCH + std::time::Duration::from_secs(second);
            let text = format!("Date: {}\r\n", httpdate::fmt_http_date(at));
            c.line.copy_from_slice(&text.as_bytes()[..37]);
            c.second = second;
        }
        out.put_slice(&c.line);
    });
}
