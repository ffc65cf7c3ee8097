//! Pure statistics: latency series (HdrHistogram at microsecond resolution plus exact
//! moments), error counts by kind, and the per-thread tallies merged at the end of a run.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency a histogram holds (one hour, in microseconds); longer ones saturate.
const MAX_US: u64 = 3_600_000_000;

/// Percentiles of the report's table (ab's rows plus 99.9 and 99.99).
pub const PERCENTILES: [f64; 11] = [
    50.0, 66.0, 75.0, 80.0, 90.0, 95.0, 98.0, 99.0, 99.9, 99.99, 100.0,
];

/// One latency series, in microseconds.
#[derive(Debug, Clone)]
pub struct Series {
    hist: Histogram<u64>,
    count: u64,
    /// Exact sums, so the mean and deviation do not carry the histogram's rounding.
    sum: f64,
    sum_sq: f64,
    min: u64,
    max: u64,
}

impl Default for Series {
    fn default() -> Self {
        Series::new()
    }
}

/// min / mean / sd / median / max of a series, in milliseconds (ab's Connection Times row).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Summary {
    pub min: f64,
    pub mean: f64,
    pub sd: f64,
    pub median: f64,
    pub max: f64,
}

/// One row of the percentile table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentile {
    pub percent: f64,
    pub ms: f64,
}

impl Series {
    pub fn new() -> Series {
        Series {
            hist: Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds"),
            count: 0,
            sum: 0.0,
            sum_sq: 0.0,
            min: u64::MAX,
            max: 0,
        }
    }

    pub fn record(&mut self, us: u64) {
        self.hist.saturating_record(us);
        self.count += 1;
        let v = us as f64;
        self.sum += v;
        self.sum_sq += v * v;
        self.min = self.min.min(us);
        self.max = self.max.max(us);
    }

    pub fn merge(&mut self, other: &Series) {
        if other.count == 0 {
            return;
        }
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
        self.count += other.count;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn mean_us(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }

    /// Sample standard deviation (n - 1), as ab prints.
    pub fn sd_us(&self) -> f64 {
        if self.count < 2 {
            return 0.0;
        }
        let n = self.count as f64;
        let var = (self.sum_sq - self.sum * self.sum / n) / (n - 1.0);
        var.max(0.0).sqrt()
    }

    pub fn min_us(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    pub fn max_us(&self) -> u64 {
        self.max
    }

    /// The value at `percent` (0..=100): 100 is the exact maximum, others come from the
    /// histogram (exact below 2 ms, within 0.1 % above).
    pub fn percentile_us(&self, percent: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        if percent >= 100.0 {
            return self.max;
        }
        // The rank asked for, computed once so float error cannot push it to the next
        // value (0.999 × 1000 is 999.0000000000001, which HdrHistogram would round up).
        let n = self.hist.len() as f64;
        let rank = (percent / 100.0 * n - 1e-6).ceil().max(1.0);
        self.hist
            .value_at_quantile((rank - 0.5) / n)
            .clamp(self.min, self.max)
    }

    pub fn summary(&self) -> Summary {
        Summary {
            min: us_to_ms(self.min_us() as f64),
            mean: us_to_ms(self.mean_us()),
            sd: us_to_ms(self.sd_us()),
            median: us_to_ms(self.percentile_us(50.0) as f64),
            max: us_to_ms(self.max_us() as f64),
        }
    }

    pub fn percentiles(&self) -> Vec<Percentile> {
        PERCENTILES
            .iter()
            .map(|&p| Percentile {
                percent: p,
                ms: us_to_ms(self.percentile_us(p) as f64),
            })
            .collect()
    }
}

pub fn us_to_ms(us: f64) -> f64 {
    us / 1000.0
}

/// What went wrong, by kind. A request counts once, under the first thing that failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// The connection could not be established.
    pub connect: u64,
    /// Sending the request failed.
    pub write: u64,
    /// Reading the response failed (reset, other socket errors).
    pub read: u64,
    /// The server closed the connection before the response was complete.
    pub closed: u64,
    /// No progress within the timeout (`-s`).
    pub timeout: u64,
    /// The response was not valid HTTP/1.x.
    pub parse: u64,
    /// The body was shorter than its Content-Length, or its length differed from the
    /// first response's (ab's "Length" failures).
    pub length: u64,
    /// Responses with a status outside 2xx (not failures, as in ab).
    pub non_2xx: u64,
    /// Bytes after a complete response when no request was waiting (the response was
    /// longer than it said). Not tied to a request, so not a failed one.
    pub extra_bytes: u64,
}

/// One kind of error, for the engine to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Connect,
    Write,
    Read,
    Closed,
    Timeout,
    Parse,
    Length,
}

impl ErrorCounts {
    pub fn add(&mut self, kind: ErrorKind) {
        match kind {
            ErrorKind::Connect => self.connect += 1,
            ErrorKind::Write => self.write += 1,
            ErrorKind::Read => self.read += 1,
            ErrorKind::Closed => self.closed += 1,
            ErrorKind::Timeout => self.timeout += 1,
            ErrorKind::Parse => self.parse += 1,
            ErrorKind::Length => self.length += 1,
        }
    }

    pub fn merge(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.write += o.write;
        self.read += o.read;
        self.closed += o.closed;
        self.timeout += o.timeout;
        self.parse += o.parse;
        self.length += o.length;
        self.non_2xx += o.non_2xx;
        self.extra_bytes += o.extra_bytes;
    }

    /// Failed requests (ab's "Failed requests": everything but non-2xx).
    pub fn failed(&self) -> u64 {
        self.connect
            + self.write
            + self.read
            + self.closed
            + self.timeout
            + self.parse
            + self.length
    }

    /// ab's split: (Connect, Receive, Length, Exceptions).
    pub fn ab_split(&self) -> (u64, u64, u64, u64) {
        (
            self.connect,
            self.read + self.closed + self.parse,
            self.length,
            self.write + self.timeout,
        )
    }

    /// Every kind with its count, in a fixed order (for the breakdown in the report).
    pub fn by_kind(&self) -> [(&'static str, u64); 9] {
        [
            ("connect", self.connect),
            ("write", self.write),
            ("read", self.read),
            ("closed early", self.closed),
            ("timeout", self.timeout),
            ("parse", self.parse),
            ("length", self.length),
            ("non-2xx", self.non_2xx),
            ("extra bytes", self.extra_bytes),
        ]
    }
}

/// Everything one engine thread counted.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Request start (intended start in rate mode) to the last byte of the response.
    pub total: Series,
    /// Start to connection established (0 on a reused connection).
    pub connect: Series,
    /// total - connect.
    pub processing: Series,
    /// Request fully sent to the first byte of the response.
    pub waiting: Series,
    pub errors: ErrorCounts,
    /// Requests finished, successfully or not.
    pub completed: u64,
    /// Responses received on a connection that had served one before.
    pub keep_alive_requests: u64,
    pub connections: u64,
    /// Every byte read from sockets.
    pub bytes_total: u64,
    /// Body (payload) bytes of complete responses.
    pub bytes_body: u64,
    /// Count per status code, few distinct codes so a small vector.
    pub statuses: Vec<(u16, u64)>,
}

impl Tally {
    pub fn count_status(&mut self, status: u16) {
        match self.statuses.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => self.statuses.push((status, 1)),
        }
    }

    pub fn merge(&mut self, o: &Tally) {
        self.total.merge(&o.total);
        self.connect.merge(&o.connect);
        self.processing.merge(&o.processing);
        self.waiting.merge(&o.waiting);
        self.errors.merge(&o.errors);
        self.completed += o.completed;
        self.keep_alive_requests += o.keep_alive_requests;
        self.connections += o.connections;
        self.bytes_total += o.bytes_total;
        self.bytes_body += o.bytes_body;
        for &(s, n) in &o.statuses {
            match self.statuses.iter_mut().find(|(x, _)| *x == s) {
                Some((_, m)) => *m += n,
                None => self.statuses.push((s, n)),
            }
        }
        self.statuses.sort_unstable();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_and_percentiles() {
        let mut s = Series::new();
        for v in 1..=1000u64 {
            s.record(v);
        }
        assert_eq!(s.count(), 1000);
        assert_eq!(s.min_us(), 1);
        assert_eq!(s.max_us(), 1000);
        assert!((s.mean_us() - 500.5).abs() < 1e-9);
        // Sample sd of 1..=1000 is sqrt(1000*1001/12) = 288.8194...
        assert!((s.sd_us() - 288.819_436).abs() < 1e-3, "{}", s.sd_us());
        assert_eq!(s.percentile_us(50.0), 500);
        assert_eq!(s.percentile_us(90.0), 900);
        assert_eq!(s.percentile_us(99.9), 999);
        assert_eq!(s.percentile_us(100.0), 1000);
        let sum = s.summary();
        assert_eq!(sum.min, 0.001);
        assert_eq!(sum.median, 0.5);
        assert_eq!(sum.max, 1.0);
        let p = s.percentiles();
        assert_eq!(p.len(), PERCENTILES.len());
        assert_eq!(p.last().unwrap().ms, 1.0);
    }

    #[test]
    fn large_values_keep_three_digits() {
        let mut s = Series::new();
        s.record(123_456);
        let p = s.percentile_us(50.0);
        assert!(p.abs_diff(123_456) <= 123, "{p}");
        // Clamped to the exact extremes.
        assert_eq!(p, 123_456);
        s.record(MAX_US * 10);
        assert_eq!(s.max_us(), MAX_US * 10);
    }

    #[test]
    fn empty_series() {
        let s = Series::new();
        assert_eq!(s.summary(), Summary::default());
        assert_eq!(s.percentile_us(99.0), 0);
        assert_eq!(s.sd_us(), 0.0);
    }

    #[test]
    fn merging() {
        let mut a = Series::new();
        let mut b = Series::new();
        for v in 0..10 {
            a.record(v);
            b.record(v + 10);
        }
        a.merge(&b);
        assert_eq!(a.count(), 20);
        assert_eq!(a.min_us(), 0);
        assert_eq!(a.max_us(), 19);
        assert!((a.mean_us() - 9.5).abs() < 1e-9);
        a.merge(&Series::new());
        assert_eq!(a.count(), 20);

        let mut t = Tally::default();
        t.count_status(200);
        t.count_status(404);
        t.count_status(200);
        let mut u = Tally::default();
        u.count_status(500);
        u.count_status(200);
        u.errors.add(ErrorKind::Timeout);
        u.errors.non_2xx = 1;
        t.merge(&u);
        assert_eq!(t.statuses, vec![(200, 3), (404, 1), (500, 1)]);
        assert_eq!(t.errors.failed(), 1);
        assert_eq!(t.errors.ab_split(), (0, 0, 0, 1));
    }

    #[test]
    fn error_split() {
        let mut e = ErrorCounts::default();
        for k in [
            ErrorKind::Connect,
            ErrorKind::Write,
            ErrorKind::Read,
            ErrorKind::Closed,
            ErrorKind::Timeout,
            ErrorKind::Parse,
            ErrorKind::Length,
            ErrorKind::Length,
        ] {
            e.add(k);
        }
        e.non_2xx = 5;
        assert_eq!(e.failed(), 8);
        assert_eq!(e.ab_split(), (1, 3, 2, 2));
        assert_eq!(e.by_kind()[7], ("non-2xx", 5));
    }
}
