//! `smolvm doctor`.

use std::process::ExitCode;

use smolvm_engine::Paths;
use smolvm_engine::doctor::{self, CheckStatus};

use crate::output::{print_json, table};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let paths = Paths::from_env();
    let report = tokio::task::spawn_blocking(move || doctor::run_checks(&paths)).await?;

    if args.json {
        print_json(&report);
    } else {
        let rows: Vec<Vec<String>> = report
            .checks
            .iter()
            .map(|check| {
                let mut detail = check.detail.clone();
                if let Some(fix) = &check.fix {
                    detail.push_str(&format!(" (fix: {fix})"));
                }
                vec![status_text(check.status).into(), check.name.clone(), detail]
            })
            .collect();
        print!("{}", table(&["STATUS", "CHECK", "DETAIL"], &rows));
        println!("\naccel: {} ({})", report.accel.accel, report.accel.reason);
    }

    if report.can_run_sandboxes() {
        Ok(ExitCode::SUCCESS)
    } else {
        if !args.json {
            eprintln!("sandboxes cannot run on this host until the failed checks are fixed");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn status_text(status: CheckStatus) -> &'static str {
    match status {
        CheckStatus::Ok => "ok",
        CheckStatus::Warn => "warn",
        CheckStatus::Fail => "FAIL",
    }
}
