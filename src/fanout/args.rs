//! The fan-out client's command-line options, to flatten into `forklift serve`.

use std::time::Duration;

use super::ClientConfig;

/// `forklift serve` options for outbound calls (`#[command(flatten)]` them).
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Outbound calls (fan-out) talking to backends at once, per worker process
    #[arg(long = "fanout-max-in-flight", value_name = "N", default_value_t = ClientConfig::default().max_in_flight)]
    pub max_in_flight: usize,
    /// Outbound calls accepted but not finished, per worker process; more fail at once
    #[arg(long = "fanout-max-pending", value_name = "N", default_value_t = ClientConfig::default().max_pending)]
    pub max_pending: usize,
    /// Default timeout of one outbound call, in seconds
    #[arg(long = "fanout-timeout", value_name = "SECONDS", default_value_t = ClientConfig::default().call_timeout.as_secs_f64(), value_parser = positive_secs)]
    pub call_timeout: f64,
    /// Timeout of connecting to a backend, in seconds
    #[arg(long = "fanout-connect-timeout", value_name = "SECONDS", default_value_t = ClientConfig::default().connect_timeout.as_secs_f64(), value_parser = positive_secs)]
    pub connect_timeout: f64,
    /// How long a backend's DNS answer is reused, in seconds
    #[arg(long = "fanout-dns-ttl", value_name = "SECONDS", default_value_t = ClientConfig::default().dns_ttl.as_secs_f64(), value_parser = non_negative_secs)]
    pub dns_ttl: f64,
}

impl Default for FanoutArgs {
    fn default() -> Self {
        let c = ClientConfig::default();
        FanoutArgs {
            max_in_flight: c.max_in_flight,
            max_pending: c.max_pending,
            call_timeout: c.call_timeout.as_secs_f64(),
            connect_timeout: c.connect_timeout.as_secs_f64(),
            dns_ttl: c.dns_ttl.as_secs_f64(),
        }
    }
}

impl FanoutArgs {
    /// The client configuration these options describe (others keep their defaults).
    pub fn to_config(&self) -> ClientConfig {
        ClientConfig {
            max_in_flight: self.max_in_flight.max(1),
            max_pending: self.max_pending.max(1),
            call_timeout: secs(self.call_timeout),
            connect_timeout: secs(self.connect_timeout),
            dns_ttl: secs(self.dns_ttl),
            ..ClientConfig::default()
        }
    }
}

/// At most a day, so a typo cannot overflow a deadline.
fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.clamp(0.0, 86_400.0))
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a positive number of seconds, got {s:?}")),
    }
}

fn non_negative_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("expected a number of seconds, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        fanout: FanoutArgs,
    }

    #[test]
    fn defaults_match_the_client_defaults() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        let c = cli.fanout.to_config();
        let d = ClientConfig::default();
        assert_eq!(c.max_in_flight, d.max_in_flight);
        assert_eq!(c.call_timeout, d.call_timeout);
        assert_eq!(c.dns_ttl, d.dns_ttl);
    }

    #[test]
    fn parses_and_validates() {
        let cli = Cli::try_parse_from([
            "x",
            "--fanout-max-in-flight",
            "50",
            "--fanout-timeout",
            "2.5",
            "--fanout-dns-ttl",
            "0",
        ])
        .unwrap();
        let c = cli.fanout.to_config();
        assert_eq!(c.max_in_flight, 50);
        assert_eq!(c.call_timeout, Duration::from_millis(2500));
        assert_eq!(c.dns_ttl, Duration::ZERO);
        assert!(Cli::try_parse_from(["x", "--fanout-timeout", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--fanout-dns-ttl", "-1"]).is_err());
    }
}
