//! `smolvm sandbox exec`.

use std::io::Write;
use std::process::ExitCode;

use smolvm_engine::sandbox::ExecEvent;
use smolvm_engine::spec::{ExecSpec, ShellMode};

use crate::commands::open_engine;
use crate::output::print_json;

/// Exit code when the command timed out, as timeout(1) uses.
const TIMEOUT_EXIT_CODE: u8 = 124;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Sandbox id.
    id: String,
    /// Kill the command and everything it started after this many seconds
    /// (1–3600, default 30).
    #[arg(long)]
    timeout: Option<u64>,
    /// login: run through the guest's login shell; raw: run the words as
    /// a program and its arguments, with no shell.
    #[arg(long, default_value = "login")]
    shell: ShellMode,
    /// Working directory inside the sandbox (default: the user's home).
    #[arg(long)]
    cwd: Option<String>,
    /// Environment variable for the command, as NAME=VALUE; repeatable.
    #[arg(long = "env", short = 'e', value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Collect the output and print one JSON result.
    #[arg(long)]
    json: bool,
    /// The command. With --shell login its words are joined with spaces
    /// and run by the shell; with raw they become the program's argv.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) => Ok((name.to_owned(), value.to_owned())),
        None => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let command = match args.shell {
        ShellMode::Login => args.command.join(" "),
        // Quote each word so that splitting on the other side gives back
        // exactly the argv this shell passed us.
        ShellMode::Raw => shlex_join(&args.command)?,
    };
    let spec = ExecSpec {
        command,
        shell: args.shell,
        cwd: args.cwd,
        env: args.env,
        timeout_secs: args.timeout,
    };
    let engine = open_engine()?;

    if args.json {
        let output = engine.exec(&args.id, &spec).await?;
        print_json(&output);
        return Ok(exit_code(output.exit_code, output.timed_out));
    }

    let mut stream = engine.exec_stream(&args.id, &spec).await?;
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    while let Some(event) = stream.next().await? {
        match event {
            ExecEvent::Stdout(bytes) => {
                if let Err(e) = stdout.write_all(&bytes).and_then(|()| stdout.flush()) {
                    return broken_pipe_exit(e);
                }
            }
            ExecEvent::Stderr(bytes) => {
                if let Err(e) = stderr.write_all(&bytes).and_then(|()| stderr.flush()) {
                    return broken_pipe_exit(e);
                }
            }
            ExecEvent::Exited {
                exit_code: code,
                timed_out,
                ..
            } => {
                if timed_out {
                    let secs = spec.timeout_secs();
                    let _ = writeln!(
                        stderr,
                        "smolvm: command timed out after {secs} s and was killed"
                    );
                }
                return Ok(exit_code(code, timed_out));
            }
        }
    }
    anyhow::bail!("the sandbox ended the command without an exit status")
}

/// Ends quietly with 128 + SIGPIPE when the reader of our output went
/// away (`smolvm sandbox exec ... | head`), like a shell pipeline does;
/// dropping the stream kills the command in the sandbox.
fn broken_pipe_exit(error: std::io::Error) -> anyhow::Result<ExitCode> {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        return Ok(ExitCode::from(128 + libc::SIGPIPE as u8));
    }
    Err(error.into())
}

fn exit_code(code: i32, timed_out: bool) -> ExitCode {
    if timed_out {
        return ExitCode::from(TIMEOUT_EXIT_CODE);
    }
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn shlex_join(words: &[String]) -> anyhow::Result<String> {
    let quoted: Result<Vec<_>, _> = words.iter().map(|w| shlex::try_quote(w)).collect();
    Ok(quoted
        .map_err(|_| anyhow::anyhow!("a command word contains a NUL byte"))?
        .join(" "))
}
