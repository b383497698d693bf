//! Pipeline metrics in the Prometheus/OpenMetrics model: what came in, what went
//! out, what was dead-lettered or dropped as late, commits, aborts and restores.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters of one pipeline. Cheap to clone; clones share values.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Records read from the input topic.
    pub records_in: Counter,
    /// Records written to the output topic.
    pub records_out: Counter,
    /// Records sent to the dead-letter topic.
    pub dead_letters: Counter,
    /// Records that fell into no open window (later than the grace period).
    pub late_records: Counter,
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
    /// Plugin calls.
    pub guest_calls: Counter,
    /// Plugin calls that trapped, ran out of memory or time, or returned too much.
    pub plugin_failures: Counter,
    /// Tasks (input partitions) currently owned.
    pub tasks: Gauge,
}

impl Metrics {
    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("weir");
        let counters: [(&str, &str, &Counter); 11] = [
            ("records_in", "Records read from the input topic", &self.records_in),
            ("records_out", "Records written to the output topic", &self.records_out),
            ("dead_letters", "Records sent to the dead-letter topic", &self.dead_letters),
            ("late_records", "Records later than the grace period of every window", &self.late_records),
            ("late_window_updates", "Window updates dropped because the window had closed", &self.late_window_updates),
            ("duplicates_skipped", "Records skipped as already processed", &self.duplicates_skipped),
            ("commits", "Commits", &self.commits),
            ("aborts", "Aborted transactions", &self.aborts),
            ("restored_records", "Changelog records replayed into state stores", &self.restored_records),
            ("guest_calls", "Calls into the plugin", &self.guest_calls),
            ("plugin_failures", "Plugin calls that failed (trap, memory, time, size)", &self.plugin_failures),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register("tasks", "Input partitions owned", self.tasks.clone());
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }

    /// A one-line summary for logs.
    pub fn summary(&self) -> String {
        format!(
            "in={} out={} dead_letters={} late={} commits={} aborts={} restored={} plugin_failures={}",
            self.records_in.get(),
            self.records_out.get(),
            self.dead_letters.get(),
            self.late_records.get(),
            self.commits.get(),
            self.aborts.get(),
            self.restored_records.get(),
            self.plugin_failures.get()
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_counters_with_prefix() {
        let m = super::Metrics::default();
        m.dead_letters.inc();
        let text = m.render();
        assert!(text.contains("weir_dead_letters_total 1"), "{text}");
    }
}
