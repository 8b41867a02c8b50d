//! Turns an [`ExecRequest`] into the argv, environment, working directory
//! and program paths the forked child needs. Everything is built here, in
//! the parent, because the child must not allocate between `fork` and
//! `execve`.

use std::ffi::CString;
use std::path::Path;

use smolvm_protocol::{ExecCommand, ExecRequest, FailureKind};

use crate::passwd::{self, RootUser};

/// `PATH` of every exec unless the request sets its own.
pub(crate) const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command ready to be started.
#[derive(Debug)]
pub(crate) struct Program {
    /// Paths to try with `execve`, in order (one per `PATH` entry when
    /// `argv[0]` has no slash).
    pub(crate) candidates: Vec<CString>,
    pub(crate) argv: Vec<CString>,
    /// `NAME=value` entries.
    pub(crate) env: Vec<CString>,
    pub(crate) cwd: CString,
    /// Program name in the error messages the child writes.
    pub(crate) name: Vec<u8>,
    /// Whether the program was looked up in `PATH`, which changes the
    /// message for a missing program ("command not found").
    pub(crate) searched_path: bool,
}

impl Program {
    /// Builds a helper program the agent runs for itself (no shell, `/` as
    /// working directory, only `PATH` in the environment).
    pub(crate) fn helper(path: &str, args: &[&str]) -> Result<Self, CommandError> {
        let argv = std::iter::once(path)
            .chain(args.iter().copied())
            .map(str::to_string);
        Ok(Self {
            candidates: to_cstrings([path.to_string()], "program name")?,
            argv: to_cstrings(argv, "command")?,
            env: to_cstrings([format!("PATH={BASE_PATH}")], "environment")?,
            cwd: CString::from(c"/"),
            name: path.as_bytes().to_vec(),
            searched_path: false,
        })
    }
}

/// Error from turning a request into a [`Program`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    #[error("argv is empty: it needs at least the program name")]
    EmptyArgv,
    #[error(
        "environment variable name {name:?} is invalid: it must be non-empty and contain no '=' or NUL"
    )]
    InvalidEnvName { name: String },
    #[error("the {field} contains a NUL byte, which cannot be passed to a program")]
    NulByte { field: &'static str },
    #[error("working directory {path} is not an absolute path")]
    RelativeCwd { path: String },
    #[error("working directory {path} does not exist")]
    CwdMissing { path: String },
    #[error("working directory {path} is not a directory")]
    CwdNotDirectory { path: String },
}

impl CommandError {
    pub(crate) fn kind(&self) -> FailureKind {
        match self {
            Self::EmptyArgv | Self::InvalidEnvName { .. } | Self::NulByte { .. } => {
                FailureKind::InvalidRequest
            }
            Self::RelativeCwd { .. } | Self::CwdNotDirectory { .. } => FailureKind::InvalidPath,
            Self::CwdMissing { .. } => FailureKind::NotFound,
        }
    }
}

/// Builds the program for `request` as uid 0 (the user from `/etc/passwd`).
pub(crate) fn prepare(request: &ExecRequest) -> Result<Program, CommandError> {
    prepare_for(request, &passwd::root_user())
}

fn prepare_for(request: &ExecRequest, user: &RootUser) -> Result<Program, CommandError> {
    let argv: Vec<String> = match &request.command {
        ExecCommand::Login { command } => {
            vec![
                user.shell.clone(),
                "-l".into(),
                "-c".into(),
                command.clone(),
            ]
        }
        ExecCommand::Argv { argv } if argv.is_empty() => return Err(CommandError::EmptyArgv),
        ExecCommand::Argv { argv } => argv.clone(),
    };

    let env = environment(user, &request.env)?;
    let path_var = env
        .iter()
        .rev()
        .find(|(name, _)| name == "PATH")
        .map_or("", |(_, v)| v.as_str());
    let program = argv[0].as_str();
    let searched_path = !program.contains('/');

    Ok(Program {
        candidates: to_cstrings(candidates(program, path_var), "program name")?,
        env: to_cstrings(env.iter().map(|(n, v)| format!("{n}={v}")), "environment")?,
        cwd: CString::new(working_directory(request.cwd.as_deref(), user)?).map_err(|_| {
            CommandError::NulByte {
                field: "working directory",
            }
        })?,
        name: program.as_bytes().to_vec(),
        argv: to_cstrings(argv, "command")?,
        searched_path,
    })
}

/// Builds the base environment, then sets the request's pairs verbatim
/// (a pair replaces a base variable of the same name).
fn environment(
    user: &RootUser,
    extra: &[(String, String)],
) -> Result<Vec<(String, String)>, CommandError> {
    let mut env: Vec<(String, String)> = [
        ("PATH", BASE_PATH),
        ("HOME", &user.home),
        ("USER", &user.name),
        ("LOGNAME", &user.name),
        ("SHELL", &user.shell),
        ("LANG", "C.UTF-8"),
        ("TERM", "xterm-256color"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();

    for (name, value) in extra {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(CommandError::InvalidEnvName { name: name.clone() });
        }
        match env.iter_mut().find(|(existing, _)| existing == name) {
            Some(slot) => slot.1 = value.clone(),
            None => env.push((name.clone(), value.clone())),
        }
    }
    Ok(env)
}

/// Checks the requested directory, or picks the user's home (`/` when the
/// home directory does not exist).
fn working_directory(cwd: Option<&str>, user: &RootUser) -> Result<String, CommandError> {
    let Some(cwd) = cwd else {
        let home = Path::new(&user.home);
        return Ok(if home.is_dir() {
            user.home.clone()
        } else {
            "/".to_string()
        });
    };

    if !cwd.starts_with('/') {
        return Err(CommandError::RelativeCwd {
            path: cwd.to_string(),
        });
    }
    match std::fs::metadata(cwd) {
        Ok(meta) if meta.is_dir() => Ok(cwd.to_string()),
        Ok(_) => Err(CommandError::CwdNotDirectory {
            path: cwd.to_string(),
        }),
        Err(_) => Err(CommandError::CwdMissing {
            path: cwd.to_string(),
        }),
    }
}

/// Paths to try for `program`: itself when it has a slash, else one per
/// `PATH` entry (an empty entry means the working directory, as in a
/// shell). An empty program name has no candidates, so it is "not found".
fn candidates(program: &str, path_var: &str) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_string()];
    }
    if program.is_empty() {
        return Vec::new();
    }
    path_var
        .split(':')
        .map(|dir| match dir.trim_end_matches('/') {
            "" if dir.is_empty() => format!("./{program}"),
            trimmed => format!("{trimmed}/{program}"),
        })
        .collect()
}

fn to_cstrings(
    items: impl IntoIterator<Item = String>,
    field: &'static str,
) -> Result<Vec<CString>, CommandError> {
    items
        .into_iter()
        .map(|item| CString::new(item).map_err(|_| CommandError::NulByte { field }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> RootUser {
        RootUser {
            name: "root".into(),
            home: "/".into(),
            shell: "/bin/sh".into(),
        }
    }

    fn argv_request(argv: &[&str]) -> ExecRequest {
        ExecRequest {
            command: ExecCommand::Argv {
                argv: argv.iter().map(|s| s.to_string()).collect(),
            },
            env: Vec::new(),
            cwd: None,
            timeout_ms: None,
            stdin: false,
            window: 1024,
        }
    }

    #[test]
    fn candidates_follow_path() {
        assert_eq!(
            candidates("ls", "/bin:/usr/bin/"),
            ["/bin/ls", "/usr/bin/ls"]
        );
        assert_eq!(candidates("ls", ":/"), ["./ls", "/ls"]);
        assert_eq!(candidates("./x", "/bin"), ["./x"]);
        assert!(candidates("", "/bin").is_empty());
    }

    #[test]
    fn login_runs_user_shell() {
        let mut request = argv_request(&[]);
        request.command = ExecCommand::Login {
            command: "echo $HOME".into(),
        };
        let program = prepare_for(&request, &user()).unwrap();
        let argv: Vec<&str> = program.argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(argv, ["/bin/sh", "-l", "-c", "echo $HOME"]);
        assert_eq!(program.candidates, [CString::new("/bin/sh").unwrap()]);
    }

    #[test]
    fn env_pairs_override_base() {
        let extra = vec![
            ("PATH".to_string(), "/opt".to_string()),
            ("X".into(), "$(y)".into()),
        ];
        let env = environment(&user(), &extra).unwrap();
        assert_eq!(env.iter().filter(|(n, _)| n == "PATH").count(), 1);
        assert!(env.contains(&("PATH".into(), "/opt".into())));
        assert!(env.contains(&("X".into(), "$(y)".into())));
    }

    #[test]
    fn invalid_requests_rejected() {
        let empty = prepare_for(&argv_request(&[]), &user()).unwrap_err();
        assert_eq!(empty.kind(), FailureKind::InvalidRequest);

        let mut bad_env = argv_request(&["true"]);
        bad_env.env = vec![("A=B".into(), "x".into())];
        let err = prepare_for(&bad_env, &user()).unwrap_err();
        assert!(matches!(err, CommandError::InvalidEnvName { .. }));

        let nul = prepare_for(&argv_request(&["echo", "a\0b"]), &user()).unwrap_err();
        assert!(matches!(nul, CommandError::NulByte { .. }));
    }

    #[test]
    fn missing_cwd_is_not_found() {
        let mut request = argv_request(&["true"]);
        request.cwd = Some("/nonexistent-smolvm-dir".into());
        let err = prepare_for(&request, &user()).unwrap_err();
        assert_eq!(err.kind(), FailureKind::NotFound);
        assert_eq!(
            err.to_string(),
            "working directory /nonexistent-smolvm-dir does not exist"
        );
    }
}
