//! Pipeline metrics in the Prometheus/OpenMetrics model: what came in, what went
//! out, what was dead-lettered or dropped as late, commits, aborts, restores,
//! plugin failures and swaps; and the host's own counters (rejected uploads).
//! Several pipelines render as one exposition, each series labelled with its
//! pipeline.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters of one pipeline. Cheap to clone; clones share values.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Records read from the source topics.
    pub records_in: Counter,
    /// Records written to the sink topics.
    pub records_out: Counter,
    /// Records written to repartition topics (for the next sub-topology).
    pub repartition_out: Counter,
    /// Records read from repartition topics.
    pub repartition_in: Counter,
    /// Records sent to the dead-letter topic.
    pub dead_letters: Counter,
    /// Records that fell into no open window (later than the grace period).
    pub late_records: Counter,
    /// Stream records a join handed on with a table row (or, left, without one).
    pub joined: Counter,
    /// Stream records an inner join dropped: their key had no row.
    pub join_misses: Counter,
    /// (record, window) pairs dropped because the window had closed.
    pub late_window_updates: Counter,
    /// Records skipped because they were already processed (refetched after a rewind).
    pub duplicates_skipped: Counter,
    /// Committed transactions (or offset commits under at-least-once).
    pub commits: Counter,
    /// Aborted transactions.
    pub aborts: Counter,
    /// Changelog records replayed into stores.
    pub restored_records: Counter,
    /// Changelog records written into standby copies.
    pub standby_records: Counter,
    /// Plugin calls.
    pub guest_calls: Counter,
    /// Plugin calls that trapped, ran out of memory or time, or returned too much.
    pub plugin_failures: Counter,
    /// Plugin versions switched in at a transaction boundary (swaps and rollbacks
    /// asked for).
    pub swaps: Counter,
    /// Versions that failed after a swap and were rolled back by the host.
    pub swap_rollbacks: Counter,
    /// Times the pipeline was started again after a failure.
    pub restarts: Counter,
    /// Tasks (input partitions) currently running.
    pub tasks: Gauge,
    /// Tasks restoring their state before they run.
    pub tasks_restoring: Gauge,
    /// Standby copies of other hosts' tasks kept warm here.
    pub tasks_standby: Gauge,
    /// 1 while the pipeline's Kafka clients reach the cluster, 0 while not.
    pub kafka_reachable: Gauge,
}

/// Counters of a host rather than of one pipeline.
#[derive(Clone, Default)]
pub struct HostMetrics {
    /// Plugin uploads refused (invalid, too large, unauthenticated).
    pub uploads_rejected: Counter,
    /// Plugin uploads stored.
    pub uploads_accepted: Counter,
}

type Labels = Vec<(String, String)>;

/// How many counters a pipeline has.
const COUNTERS: usize = 19;
/// How many gauges a pipeline has.
const GAUGES: usize = 4;

impl Metrics {
    fn counters(&self) -> [(&'static str, &'static str, &Counter); COUNTERS] {
        [
            ("records_in", "Records read from the source topics", &self.records_in),
            ("records_out", "Records written to the sink topics", &self.records_out),
            ("repartition_out", "Records written to repartition topics", &self.repartition_out),
            ("repartition_in", "Records read from repartition topics", &self.repartition_in),
            ("dead_letters", "Records sent to the dead-letter topic", &self.dead_letters),
            ("late_records", "Records later than the grace period of every window", &self.late_records),
            ("joined", "Stream records joined with a table row (a left join's with or without)", &self.joined),
            ("join_misses", "Stream records an inner join dropped: no row for their key", &self.join_misses),
            ("late_window_updates", "Window updates dropped because the window had closed", &self.late_window_updates),
            ("duplicates_skipped", "Records skipped as already processed", &self.duplicates_skipped),
            ("commits", "Commits", &self.commits),
            ("aborts", "Aborted transactions", &self.aborts),
            ("restored_records", "Changelog records replayed into state stores", &self.restored_records),
            ("standby_records", "Changelog records written into standby copies", &self.standby_records),
            ("guest_calls", "Calls into the plugin", &self.guest_calls),
            ("plugin_failures", "Plugin calls that failed (trap, memory, time, size)", &self.plugin_failures),
            ("swaps", "Plugin versions switched in at a transaction boundary", &self.swaps),
            ("swap_rollbacks", "Versions rolled back by the host after failing", &self.swap_rollbacks),
            ("restarts", "Times the pipeline was started again after a failure", &self.restarts),
        ]
    }

    fn gauges(&self) -> [(&'static str, &'static str, &Gauge); GAUGES] {
        [
            ("tasks", "Input partitions whose tasks run", &self.tasks),
            ("tasks_restoring", "Tasks restoring their state before they run", &self.tasks_restoring),
            ("tasks_standby", "Standby copies of other hosts' tasks kept warm here", &self.tasks_standby),
            ("kafka_reachable", "1 while the pipeline reaches Kafka, 0 while not", &self.kafka_reachable),
        ]
    }

    /// Several pipelines' metrics and the host's, in the Prometheus text format:
    /// one family per metric, a series per pipeline labelled `pipeline="<name>"`.
    pub fn render_all(pipelines: &[(String, Metrics)], host: &HostMetrics) -> String {
        let counters: Vec<Family<Labels, Counter>> = (0..COUNTERS).map(|_| Family::default()).collect();
        let gauges: Vec<Family<Labels, Gauge>> = (0..GAUGES).map(|_| Family::default()).collect();
        for (pipeline, metrics) in pipelines {
            let labels = vec![("pipeline".to_owned(), pipeline.clone())];
            for (family, (_, _, counter)) in counters.iter().zip(metrics.counters()) {
                family.get_or_create(&labels).inc_by(counter.get());
            }
            for (family, (_, _, gauge)) in gauges.iter().zip(metrics.gauges()) {
                family.get_or_create(&labels).set(gauge.get());
            }
        }
        let mut registry = Registry::with_prefix("weir");
        let names = Metrics::default();
        for (family, (name, help, _)) in counters.into_iter().zip(names.counters()) {
            registry.register(name, help, family);
        }
        for (family, (name, help, _)) in gauges.into_iter().zip(names.gauges()) {
            registry.register(name, help, family);
        }
        registry.register("uploads_rejected", "Plugin uploads refused", host.uploads_rejected.clone());
        registry.register("uploads_accepted", "Plugin uploads stored", host.uploads_accepted.clone());
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }

    /// A one-line summary for logs.
    pub fn summary(&self) -> String {
        format!(
            "in={} out={} dead_letters={} late={} commits={} aborts={} restored={} plugin_failures={} tasks={} \
             restoring={} standby={}",
            self.records_in.get(),
            self.records_out.get(),
            self.dead_letters.get(),
            self.late_records.get(),
            self.commits.get(),
            self.aborts.get(),
            self.restored_records.get(),
            self.plugin_failures.get(),
            self.tasks.get(),
            self.tasks_restoring.get(),
            self.tasks_standby.get()
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_counters_with_prefix() {
        let m = super::Metrics::default();
        m.dead_letters.inc();
        let text = super::Metrics::render_all(&[("p".into(), m)], &super::HostMetrics::default());
        assert!(text.contains("weir_dead_letters_total{pipeline=\"p\"} 1"), "{text}");
    }

    #[test]
    fn several_pipelines_share_one_family_per_metric() {
        let (a, b) = (super::Metrics::default(), super::Metrics::default());
        a.records_in.inc_by(5);
        b.records_in.inc_by(7);
        b.swap_rollbacks.inc();
        b.tasks.set(3);
        let host = super::HostMetrics::default();
        host.uploads_rejected.inc_by(2);
        let text = super::Metrics::render_all(&[("a".into(), a), ("b".into(), b)], &host);
        assert_eq!(text.matches("# TYPE weir_records_in counter").count(), 1, "{text}");
        assert!(text.contains("weir_records_in_total{pipeline=\"a\"} 5"), "{text}");
        assert!(text.contains("weir_records_in_total{pipeline=\"b\"} 7"), "{text}");
        assert!(text.contains("weir_swap_rollbacks_total{pipeline=\"b\"} 1"), "{text}");
        assert!(text.contains("weir_tasks{pipeline=\"b\"} 3"), "{text}");
        assert!(text.contains("weir_uploads_rejected_total 2"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
