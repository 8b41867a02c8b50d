//! `smolvm bench`: times the main operations on real sandboxes and prints
//! a table of medians and 95th percentiles.

mod http;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use smolvm_engine::sandbox::{CreateProgress, Engine};
use smolvm_engine::spec::{CreateRequest, ExecSpec, NetworkMode, ShellMode};

use super::open_engine;
use crate::output::{print_json, table};

const MIB: usize = 1024 * 1024;

/// Untimed execs before the round trips are timed.
const WARMUP_EXECS: usize = 10;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Sandboxes to create, one after the other.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Exec round trips timed per sandbox.
    #[arg(long, default_value_t = 20)]
    execs: usize,
    /// Network mode of the benchmark sandboxes.
    #[arg(long, default_value = "open")]
    network: NetworkMode,
    /// Also time create and exec through a `smolvm server` on loopback.
    #[arg(long)]
    http: bool,
    /// Print the samples as JSON.
    #[arg(long)]
    json: bool,
}

/// Samples per metric, in milliseconds (MiB for memory).
#[derive(Default)]
struct Samples(BTreeMap<&'static str, Vec<f64>>);

impl Samples {
    fn add(&mut self, metric: &'static str, value: f64) {
        self.0.entry(metric).or_default().push(value);
    }

    fn time(&mut self, metric: &'static str, since: Instant) {
        self.add(metric, since.elapsed().as_secs_f64() * 1000.0);
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let engine = open_engine()?;
    let mut samples = Samples::default();

    for run in 0..args.runs {
        eprintln!("run {}/{}...", run + 1, args.runs);
        bench_one(&engine, &args, &mut samples).await?;
        if args.http {
            http::bench_http(&engine, &args, &mut samples).await?;
        }
    }

    if args.json {
        print_json(&samples.0);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = ORDER
        .iter()
        .filter_map(|(metric, unit)| {
            let values = samples.0.get(metric)?;
            let (median, p95) = summarize(values);
            Some(vec![
                metric.to_string(),
                values.len().to_string(),
                format!("{median:.1}"),
                format!("{p95:.1}"),
                unit.to_string(),
            ])
        })
        .collect();
    print!(
        "{}",
        table(&["METRIC", "N", "MEDIAN", "P95", "UNIT"], &rows)
    );
    Ok(ExitCode::SUCCESS)
}

/// Metrics in the order the table shows them, with their units.
const ORDER: &[(&str, &str)] = &[
    ("create to first command", "ms"),
    ("exec round trip (true, raw)", "ms"),
    ("exec round trip (true, login)", "ms"),
    ("exec 1 MiB stdout", "ms"),
    ("exec 20 MiB stdout", "ms"),
    ("copy in 10 MiB", "ms"),
    ("copy out 10 MiB", "ms"),
    ("delete", "ms"),
    ("HTTP create to first command", "ms"),
    ("HTTP exec round trip (true, raw)", "ms"),
    ("host RSS per idle sandbox", "MiB"),
];

async fn bench_one(engine: &Engine, args: &Args, samples: &mut Samples) -> anyhow::Result<()> {
    let request = CreateRequest {
        network: args.network,
        ..Default::default()
    };
    let started = Instant::now();
    let info = engine.create(request, &|_: CreateProgress| {}).await?;
    let id = info.id.clone();
    let result = measure(engine, &id, args, samples, started).await;

    let deleting = Instant::now();
    engine.delete(&id).await?;
    samples.time("delete", deleting);
    result
}

async fn measure(
    engine: &Engine,
    id: &str,
    args: &Args,
    samples: &mut Samples,
    created: Instant,
) -> anyhow::Result<()> {
    let raw_true = exec_spec("true", ShellMode::Raw);
    engine.exec(id, &raw_true).await?;
    samples.time("create to first command", created);

    // Idle memory, after boot and one command but before the large ones.
    tokio::time::sleep(Duration::from_millis(500)).await;
    samples.add("host RSS per idle sandbox", sandbox_rss_mib(id));

    // A fresh guest runs its first commands slowly while TCG translates
    // code for the first time; time the steady state.
    for _ in 0..WARMUP_EXECS {
        engine.exec(id, &raw_true).await?;
    }
    for (metric, shell) in [
        ("exec round trip (true, raw)", ShellMode::Raw),
        ("exec round trip (true, login)", ShellMode::Login),
    ] {
        let spec = exec_spec("true", shell);
        for _ in 0..args.execs {
            let started = Instant::now();
            engine.exec(id, &spec).await?;
            samples.time(metric, started);
        }
    }

    for (metric, mib) in [("exec 1 MiB stdout", 1), ("exec 20 MiB stdout", 20)] {
        let spec = exec_spec(&format!("head -c {} /dev/zero", mib * MIB), ShellMode::Raw);
        let started = Instant::now();
        let output = engine.exec(id, &spec).await?;
        samples.time(metric, started);
        anyhow::ensure!(
            output.stdout.len() == mib * MIB,
            "short output from {metric}"
        );
    }

    let data = vec![0x5au8; 10 * MIB];
    let started = Instant::now();
    engine
        .write_file(id, "/tmp/bench.bin", 0o644, false, &mut data.as_slice())
        .await?;
    samples.time("copy in 10 MiB", started);

    let started = Instant::now();
    let back = engine
        .read_file(id, "/tmp/bench.bin")
        .await?
        .read_to_end()
        .await?;
    samples.time("copy out 10 MiB", started);
    anyhow::ensure!(back == data, "file changed in the round trip");
    Ok(())
}

fn exec_spec(command: &str, shell: ShellMode) -> ExecSpec {
    ExecSpec {
        command: command.into(),
        shell,
        timeout_secs: Some(120),
        ..Default::default()
    }
}

/// Sums the resident memory of every process serving the sandbox (its
/// supervisor, QEMU and slirp4netns), found by the id in their command lines.
fn sandbox_rss_mib(id: &str) -> f64 {
    let mut kib = 0u64;
    let own = std::process::id();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == own {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(id) && !is_slirp_for(pid, id) {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok());
        kib += rss.unwrap_or(0);
    }
    kib as f64 / 1024.0
}

/// slirp4netns names the VMM's pid rather than the sandbox id; match it
/// through its parent, the sandbox's supervisor.
fn is_slirp_for(pid: u32, id: &str) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "slirp4netns" {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let parent = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1));
    let Some(parent) = parent else { return false };
    let cmdline = std::fs::read(format!("/proc/{parent}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains(id)
}

/// Returns (median, 95th percentile) by the nearest-rank method.
fn summarize(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    };
    (rank(0.5), rank(0.95))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarize_nearest_rank() {
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(summarize(&values), (10.0, 19.0));
        assert_eq!(summarize(&[7.0]), (7.0, 7.0));
    }
}
