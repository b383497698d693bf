//! Whether a pipeline reaches Kafka, from what librdkafka itself reports: a
//! global error (all brokers down, a transport failure) marks the cluster
//! unreachable at once; the statistics each client emits every second say which
//! brokers are up, so reachability comes back without waiting for traffic.
//!
//! The state is shared by the pipeline's clients, logged when it changes, shown in
//! the pipeline's status and exported as the `weir_kafka_reachable` gauge.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::gauge::Gauge;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

/// How often clients report statistics (and so how fast recovery is seen).
pub const STATS_INTERVAL_MS: &str = "1000";

/// What the status API shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KafkaStatus {
    /// Whether every client of the pipeline has a broker it can talk to.
    pub reachable: bool,
    /// Since when (ms since the epoch) it has been in this state.
    pub since_ms: u64,
    /// The last error a client reported, if any.
    pub last_error: Option<String>,
}

struct State {
    /// Per client: whether its last report had a broker up.
    clients: BTreeMap<&'static str, bool>,
    reachable: bool,
    since: Instant,
    since_ms: u64,
    last_error: Option<String>,
}

/// The reachability of Kafka as a pipeline's clients see it. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    state: Arc<Mutex<State>>,
    gauge: Gauge,
    pipeline: Arc<str>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Errors that say the client lost the cluster, not that one request failed.
fn means_unreachable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::NetworkException
    )
}

impl Health {
    /// Reachability for `pipeline`, mirrored into `gauge` (1 reachable, 0 not).
    pub fn new(pipeline: &str, gauge: Gauge) -> Self {
        gauge.set(1);
        let state = State {
            clients: BTreeMap::new(),
            reachable: true,
            since: Instant::now(),
            since_ms: now_ms(),
            last_error: None,
        };
        Self { state: Arc::new(Mutex::new(state)), gauge, pipeline: pipeline.into() }
    }

    fn update(&self, client: &'static str, up: bool, error: Option<String>) {
        let Ok(mut state) = self.state.lock() else { return };
        state.clients.insert(client, up);
        if let Some(error) = error {
            state.last_error = Some(error);
        }
        self.settle(&mut state, client);
    }

    /// Brings `reachable` in line with the clients' reports, logging a change.
    fn settle(&self, state: &mut State, client: &str) {
        let reachable = state.clients.values().all(|up| *up);
        if reachable == state.reachable {
            return;
        }
        let was = state.since.elapsed();
        state.reachable = reachable;
        state.since = Instant::now();
        state.since_ms = now_ms();
        self.gauge.set(i64::from(reachable));
        if reachable {
            tracing::info!(pipeline = %self.pipeline, after_ms = was.as_millis() as u64, "Kafka reachable again");
        } else {
            let error = state.last_error.clone().unwrap_or_default();
            tracing::warn!(pipeline = %self.pipeline, %client, %error, "Kafka unreachable; retrying until it is back");
        }
    }

    /// A global error reported by `client`'s librdkafka.
    pub fn report_error(&self, client: &'static str, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        let message = format!("{client}: {reason}");
        if code.is_some_and(means_unreachable) {
            self.update(client, false, Some(message));
        } else {
            tracing::warn!(pipeline = %self.pipeline, %client, error = %error, reason, "Kafka client error");
            if let Ok(mut state) = self.state.lock() {
                state.last_error = Some(message);
            }
        }
    }

    /// An error of a short-lived helper client (restore, queries), which sends
    /// no statistics: remembered and logged, but it does not decide
    /// reachability (the pipeline's consumer and producer do).
    pub fn note_error(&self, client: &'static str, error: &str) {
        tracing::debug!(pipeline = %self.pipeline, %client, %error, "Kafka client error");
        if let Ok(mut state) = self.state.lock() {
            state.last_error = Some(format!("{client}: {error}"));
        }
    }

    /// A statistics report of `client` (librdkafka's JSON): reachable if any
    /// real broker is up. Only the broker states are read, so the report's other
    /// fields may change between librdkafka versions without breaking this.
    pub fn report_stats(&self, client: &'static str, json: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Broker {
            nodeid: i64,
            state: String,
        }
        #[derive(serde::Deserialize)]
        struct Stats {
            brokers: BTreeMap<String, Broker>,
        }
        match serde_json::from_slice::<Stats>(json) {
            Ok(stats) => {
                let up = stats.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP");
                self.update(client, up, None);
            }
            Err(e) => tracing::debug!(pipeline = %self.pipeline, %client, error = %e, "unreadable client statistics"),
        }
    }

    /// Setting up (topics, clients) failed because Kafka did not answer
    /// (`Some(reason)`), or it succeeded (`None`).
    pub fn setting_up(&self, failed: Option<&str>) {
        match failed {
            Some(reason) => self.update("setup", false, Some(format!("setup: {reason}"))),
            None => {
                self.forget("setup");
            }
        }
    }

    /// Forgets a client that was closed.
    pub fn forget(&self, client: &'static str) {
        if let Ok(mut state) = self.state.lock() {
            state.clients.remove(client);
            self.settle(&mut state, client);
        }
    }

    /// Whether Kafka is reachable now.
    pub fn reachable(&self) -> bool {
        self.state.lock().map(|s| s.reachable).unwrap_or(true)
    }

    /// How long Kafka has been unreachable, if it is.
    pub fn unreachable_for(&self) -> Option<Duration> {
        self.state.lock().ok().filter(|s| !s.reachable).map(|s| s.since.elapsed())
    }

    /// The state for the status API.
    pub fn status(&self) -> KafkaStatus {
        match self.state.lock() {
            Ok(s) => KafkaStatus { reachable: s.reachable, since_ms: s.since_ms, last_error: s.last_error.clone() },
            Err(_) => KafkaStatus { reachable: true, since_ms: 0, last_error: None },
        }
    }

    /// The pipeline this health belongs to (for log lines of its clients).
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_must_reach_a_broker() {
        let gauge = Gauge::default();
        let health = Health::new("p", gauge.clone());
        assert!(health.reachable());
        health.report_error("consumer", &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown), "3/3 brokers are down");
        assert!(!health.reachable());
        assert_eq!(gauge.get(), 0);
        let status = health.status();
        assert!(status.last_error.is_some_and(|e| e.contains("brokers are down")));
        // Another client being fine does not make the pipeline reachable.
        let stats = |state: &str| {
            format!(
                r#"{{"name":"x","brokers":{{"b:9092/1":{{"nodeid":1,"state":"{state}"}},"b:9092/bootstrap":{{"nodeid":-1,"state":"UP"}}}}}}"#
            )
        };
        health.report_stats("producer", stats("UP").as_bytes());
        assert!(!health.reachable());
        health.report_stats("consumer", stats("CONNECT").as_bytes());
        assert!(!health.reachable(), "a bootstrap placeholder being up is not a broker being up");
        health.report_stats("consumer", stats("UP").as_bytes());
        assert!(health.reachable() && gauge.get() == 1);
        // An error that is about one request changes nothing.
        health.report_error("consumer", &KafkaError::Global(RDKafkaErrorCode::MessageTimedOut), "slow");
        assert!(health.reachable());
    }
}
