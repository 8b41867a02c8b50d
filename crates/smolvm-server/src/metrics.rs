//! Prometheus metrics: sandboxes by state (read at scrape time) and
//! latency histograms for creates and execs, in the text exposition format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use smolvm_engine::state::SandboxState;

/// Upper bounds of the create latency buckets, in seconds. Cold boots
/// under TCG take seconds and building the default image takes minutes.
const CREATE_BUCKETS: [f64; 10] = [0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Upper bounds of the exec latency buckets, in seconds.
const EXEC_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// Counters the server updates as it handles requests.
#[derive(Debug)]
pub(crate) struct Metrics {
    create: Histogram,
    exec: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            create: Histogram::new(&CREATE_BUCKETS),
            exec: Histogram::new(&EXEC_BUCKETS),
        }
    }
}

impl Metrics {
    /// Records a successful create that took `elapsed`.
    pub(crate) fn observe_create(&self, elapsed: Duration) {
        self.create.observe(elapsed);
    }

    /// Records an exec that ran to its exit (any exit code) in `elapsed`.
    pub(crate) fn observe_exec(&self, elapsed: Duration) {
        self.exec.observe(elapsed);
    }

    /// Renders every metric; `states` contains the state of each sandbox.
    pub(crate) fn render(&self, states: &[SandboxState]) -> String {
        let mut out = String::new();
        out.push_str("# HELP smolvm_sandboxes Sandboxes on this host, by state.\n");
        out.push_str("# TYPE smolvm_sandboxes gauge\n");
        for state in SandboxState::ALL {
            let count = states.iter().filter(|s| **s == state).count();
            let _ = writeln!(out, "smolvm_sandboxes{{state=\"{state}\"}} {count}");
        }
        self.create.render(
            &mut out,
            "smolvm_create_duration_seconds",
            "Time to create a sandbox through the API, until commands can run.",
        );
        self.exec.render(
            &mut out,
            "smolvm_exec_duration_seconds",
            "Time to run a buffered exec through the API, until the command exits.",
        );
        out
    }
}

/// A cumulative histogram with fixed buckets.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// One count per bound; each observation lands in the first bucket
    /// whose bound it does not exceed. Rendering makes them cumulative.
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(index) = self.bounds.iter().position(|bound| seconds <= *bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_counted_including_zero() {
        let metrics = Metrics::default();
        let text = metrics.render(&[
            SandboxState::Running,
            SandboxState::Running,
            SandboxState::Error,
        ]);
        assert!(
            text.contains("smolvm_sandboxes{state=\"running\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("smolvm_sandboxes{state=\"error\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("smolvm_sandboxes{state=\"stopped\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn histogram_buckets_cumulative() {
        let metrics = Metrics::default();
        metrics.observe_exec(Duration::from_millis(3));
        metrics.observe_exec(Duration::from_millis(40));
        metrics.observe_exec(Duration::from_secs(100));
        let text = metrics.render(&[]);
        assert!(
            text.contains("smolvm_exec_duration_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("smolvm_exec_duration_seconds_bucket{le=\"0.05\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("smolvm_exec_duration_seconds_bucket{le=\"60\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("smolvm_exec_duration_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("smolvm_exec_duration_seconds_count 3\n"),
            "{text}"
        );
        assert!(
            text.contains("smolvm_exec_duration_seconds_sum 100.043\n"),
            "{text}"
        );
    }
}
