//! A caching resolver for the fan-out client: one lookup per host per TTL, shared by every
//! concurrent call (single flight), done on the runtime's small blocking pool rather than
//! a thread per lookup, and counted so the caching can be checked.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::connect::dns::Name;

/// Most host names kept in the cache; the oldest answer is dropped past this.
const MAX_HOSTS: usize = 1024;

/// Why a host name could not be resolved.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot resolve {host}: {message}")]
pub struct ResolveError {
    pub host: String,
    pub message: String,
}

/// One cached answer.
#[derive(Clone)]
struct Answer {
    addrs: Arc<[IpAddr]>,
    expires: Instant,
}

/// Per-host slot; the async mutex makes concurrent misses for one host wait for a
/// single lookup instead of each starting its own.
type Slot = Arc<tokio::sync::Mutex<Option<Answer>>>;

struct State {
    ttl: Duration,
    hosts: Mutex<HashMap<Box<str>, Slot>>,
    /// Lookups actually performed (cache misses), for tests and stats.
    lookups: AtomicU64,
}

/// A resolver with a TTL cache. Cloning shares the cache.
#[derive(Clone)]
pub struct CachingResolver {
    state: Arc<State>,
}

impl CachingResolver {
    pub fn new(ttl: Duration) -> CachingResolver {
        CachingResolver {
            state: Arc::new(State {
                ttl,
                hosts: Mutex::new(HashMap::new()),
                lookups: AtomicU64::new(0),
            }),
        }
    }

    /// How many lookups reached the system resolver so far.
    pub fn lookups(&self) -> u64 {
        self.state.lookups.load(Ordering::Relaxed)
    }

    /// The addresses of `host`, from the cache while its answer is fresh. Must run inside
    /// a tokio runtime (a miss is resolved on its blocking pool).
    pub async fn resolve(&self, host: &str) -> Result<Arc<[IpAddr]>, ResolveError> {
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
            return Ok(Arc::from(vec![ip]));
        }
        let slot = self.slot(host);
        let mut cached = slot.lock().await;
        if let Some(a) = cached.as_ref().filter(|a| a.expires > Instant::now()) {
            return Ok(a.addrs.clone());
        }
        self.state.lookups.fetch_add(1, Ordering::Relaxed);
        let name = host.to_owned();
        let looked = tokio::task::spawn_blocking(move || system_lookup(&name)).await;
        let addrs = match looked {
            Ok(Ok(addrs)) if !addrs.is_empty() => addrs,
            Ok(Ok(_)) => return Err(err(host, "no addresses")),
            Ok(Err(e)) => return Err(err(host, &e.to_string())),
            Err(e) => return Err(err(host, &e.to_string())),
        };
        let addrs: Arc<[IpAddr]> = Arc::from(addrs);
        *cached = Some(Answer {
            addrs: addrs.clone(),
            expires: Instant::now() + self.state.ttl,
        });
        Ok(addrs)
    }

    fn slot(&self, host: &str) -> Slot {
        let mut hosts = self.state.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = hosts.get(host) {
            return s.clone();
        }
        if hosts.len() >= MAX_HOSTS {
            // Drop answers nobody is resolving right now; a host evicted this way is simply
            // looked up again next time.
            hosts.retain(|_, s| Arc::strong_count(s) > 1);
            if hosts.len() >= MAX_HOSTS {
                if let Some(k) = hosts.keys().next().cloned() {
                    hosts.remove(&k);
                }
            }
        }
        let s = Slot::default();
        hosts.insert(host.into(), s.clone());
        s
    }
}

fn err(host: &str, message: &str) -> ResolveError {
    ResolveError {
        host: host.to_owned(),
        message: message.to_owned(),
    }
}

/// getaddrinfo through the standard library, deduplicated, order kept.
fn system_lookup(host: &str) -> io::Result<Vec<IpAddr>> {
    let mut out: Vec<IpAddr> = Vec::new();
    for a in (host, 0).to_socket_addrs()? {
        if !out.contains(&a.ip()) {
            out.push(a.ip());
        }
    }
    Ok(out)
}

/// What the connector gets back: the cached addresses with port 0 (the connector sets
/// the port from the URL).
pub struct Addrs {
    addrs: Arc<[IpAddr]>,
    next: usize,
}

impl Iterator for Addrs {
    type Item = SocketAddr;
    fn next(&mut self) -> Option<SocketAddr> {
        let ip = *self.addrs.get(self.next)?;
        self.next += 1;
        Some(SocketAddr::new(ip, 0))
    }
}

impl tower_service::Service<Name> for CachingResolver {
    type Response = Addrs;
    type Error = ResolveError;
    type Future = Pin<Box<dyn Future<Output = Result<Addrs, ResolveError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ResolveError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addrs = this.resolve(name.as_str()).await?;
            Ok(Addrs { addrs, next: 0 })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn ip_literals_skip_the_resolver() {
        let r = CachingResolver::new(Duration::from_secs(60));
        let got = rt().block_on(r.resolve("127.0.0.1")).unwrap();
        assert_eq!(&*got, &["127.0.0.1".parse::<IpAddr>().unwrap()]);
        let got = rt().block_on(r.resolve("[::1]")).unwrap();
        assert_eq!(&*got, &["::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.lookups(), 0);
    }

    #[test]
    fn localhost_is_looked_up_once_per_ttl() {
        let r = CachingResolver::new(Duration::from_secs(3600));
        let rt = rt();
        rt.block_on(async {
            // Concurrent misses share one lookup.
            let all = futures_util::future::join_all((0..50).map(|_| r.resolve("localhost"))).await;
            assert!(all.iter().all(|a| a.as_ref().is_ok_and(|a| !a.is_empty())));
            for _ in 0..50 {
                r.resolve("localhost").await.unwrap();
            }
        });
        assert_eq!(r.lookups(), 1);
    }

    #[test]
    fn an_expired_answer_is_looked_up_again() {
        let r = CachingResolver::new(Duration::ZERO);
        let rt = rt();
        rt.block_on(async {
            r.resolve("localhost").await.unwrap();
            r.resolve("localhost").await.unwrap();
        });
        assert_eq!(r.lookups(), 2);
    }

    #[test]
    fn unknown_hosts_are_errors() {
        let r = CachingResolver::new(Duration::from_secs(60));
        let e = rt()
            .block_on(r.resolve("no-such-host.invalid"))
            .unwrap_err();
        assert_eq!(e.host, "no-such-host.invalid");
    }
}
