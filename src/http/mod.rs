//! The HTTP/1.1 codec shared by every concurrency model: sans-IO functions over byte
//! buffers (no sockets here). [`request`] decodes requests (limits, chunked bodies,
//! 100-continue, smuggling defences), [`response`] encodes responses (framing, cached
//! `Date`, keep-alive rules), and [`HttpError`] maps every protocol failure to the one
//! status code it deserves.

pub mod date;
pub mod request;
pub mod response;
pub mod uwsgi;

pub use request::{ChunkedDecoder, Decoded, Decoder, Piece, RequestMeta};
pub use response::{encode_error, encode_head, BodyEncoder, Framing, ShortBody};
pub use uwsgi::UwsgiDecoder;

/// Protocol limits. Requests beyond them get a 4xx and the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request-target, in bytes (414 beyond).
    pub max_uri: usize,
    /// Largest request head (request line plus headers), in bytes (431 beyond).
    pub max_head: usize,
    /// Most header fields in a request (431 beyond).
    pub max_headers: usize,
    /// Largest request body, in bytes, after de-chunking (413 beyond).
    pub max_body: u64,
    /// Largest vars block of a uwsgi packet, in bytes (`--buffer-size`; 431 beyond).
    pub max_uwsgi_vars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uri: 8 * 1024,
            max_head: 64 * 1024,
            max_headers: 100,
            max_body: 64 * 1024 * 1024,
            max_uwsgi_vars: 4096,
        }
    }
}

/// Everything that can go wrong while reading a request, or encoding an app's response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("unsupported HTTP version")]
    BadVersion,
    #[error("request-target too long")]
    UriTooLong,
    #[error("request header block too large")]
    HeadTooLarge,
    #[error("too many request headers")]
    TooManyHeaders,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("ambiguous request framing: {0}")]
    Smuggling(&'static str),
    #[error("invalid chunked body: {0}")]
    BadChunk(&'static str),
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    #[error("method not implemented")]
    MethodNotImplemented,
    #[error("unsupported Expect header")]
    ExpectationFailed,
    #[error("request timed out")]
    Timeout,
    #[error("app produced an invalid response: {0}")]
    BadAppHeader(String),
    #[error("malformed uwsgi packet: {0}")]
    Uwsgi(String),
    #[error("uwsgi packet with modifier1 {0}: only WSGI/HTTP requests (modifier1 0) are served; use `uwsgi_modifier1 0` (nginx's default)")]
    UwsgiModifier(u8),
    #[error("uwsgi request block of {size} bytes is larger than --buffer-size {max}; raise buffer-size (e.g. `buffer-size = 32768`)")]
    UwsgiVarsTooLarge { size: usize, max: usize },
}

impl HttpError {
    /// The status code answered for this error (the one mapping used by every model).
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_)
            | HttpError::Smuggling(_)
            | HttpError::BadChunk(_)
            | HttpError::Uwsgi(_) => 400,
            HttpError::BadVersion => 505,
            HttpError::UriTooLong => 414,
            HttpError::HeadTooLarge
            | HttpError::TooManyHeaders
            | HttpError::UwsgiVarsTooLarge { .. } => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::UnsupportedTransferCoding
            | HttpError::MethodNotImplemented
            | HttpError::UwsgiModifier(_) => 501,
            HttpError::ExpectationFailed => 417,
            HttpError::Timeout => 408,
            HttpError::BadAppHeader(_) => 500,
        }
    }

    /// A one-line body explaining the error to the client.
    pub fn body(&self) -> String {
        match self {
            HttpError::BadAppHeader(_) => "Internal Server Error\n".to_string(),
            e => format!("{e}\n"),
        }
    }
}

#[cfg(test)]
mod tests;
