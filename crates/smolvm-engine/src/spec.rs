//! What a caller asks for: sandbox specs and exec requests, with the
//! validation that runs before anything is created.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use smolvm_protocol::{ExecCommand, ExecRequest};

use crate::accel::AccelChoice;
use crate::limits::*;

/// An invalid field in a request. Each message names the field, the
/// value, the accepted range and what to pass instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {problem}")]
pub struct SpecError {
    /// Name of the field as the caller spelled it (`memory`, `env.FOO`).
    pub field: String,
    pub problem: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// The VMM that runs a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Qemu,
    Firecracker,
}

/// The backend a caller asked for; `auto` picks QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    #[default]
    Auto,
    Qemu,
    Firecracker,
}

/// Guest operating system family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    #[default]
    Linux,
}

/// Whether the sandbox gets a network interface with outbound access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Outbound access through user-mode networking; host loopback blocked.
    #[default]
    Open,
    /// No network interface at all.
    Off,
}

/// How an exec command string is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShellMode {
    /// Through the guest user's login shell, `SHELL -l -c COMMAND`.
    #[default]
    Login,
    /// Split into words by POSIX shell rules without expansion and run
    /// directly, with no shell.
    Raw,
}

macro_rules! text_enum {
    ($ty:ty, $field:literal, [$($text:literal => $value:expr),+ $(,)?]) => {
        impl FromStr for $ty {
            type Err = SpecError;

            fn from_str(s: &str) -> Result<Self, SpecError> {
                match s {
                    $($text => Ok($value),)+
                    other => Err(SpecError::new(
                        $field,
                        format!("{other:?} is not one of: {}", [$($text),+].join(", ")),
                    )),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let text = match self {
                    $(v if *v == $value => $text,)+
                    _ => unreachable!("every variant has a text form"),
                };
                f.write_str(text)
            }
        }
    };
}

text_enum!(Backend, "backend", ["qemu" => Backend::Qemu, "firecracker" => Backend::Firecracker]);
text_enum!(BackendChoice, "backend", [
    "auto" => BackendChoice::Auto,
    "qemu" => BackendChoice::Qemu,
    "firecracker" => BackendChoice::Firecracker,
]);
text_enum!(Os, "os", ["linux" => Os::Linux]);
text_enum!(NetworkMode, "network", ["open" => NetworkMode::Open, "off" => NetworkMode::Off]);
text_enum!(ShellMode, "shell", ["login" => ShellMode::Login, "raw" => ShellMode::Raw]);

/// A request to create a sandbox, before defaults are applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateRequest {
    pub os: Option<Os>,
    pub image: Option<String>,
    pub memory_mib: Option<u32>,
    pub disk_mib: Option<u32>,
    pub cpus: Option<u32>,
    pub backend: BackendChoice,
    pub accel: Option<AccelChoice>,
    pub network: NetworkMode,
}

/// A validated sandbox spec with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    pub os: Os,
    pub image: Option<String>,
    pub memory_mib: u32,
    pub disk_mib: u32,
    pub cpus: u32,
    pub backend: Backend,
    pub network: NetworkMode,
}

impl CreateRequest {
    /// Checks every field against its limits and fills in defaults.
    /// `host_cpus` bounds `cpus`.
    pub fn validate(&self, host_cpus: u32) -> Result<SandboxSpec, SpecError> {
        let memory_mib = self.memory_mib.unwrap_or(MEMORY_MIB_DEFAULT);
        check_range("memory", memory_mib, MEMORY_MIB_MIN, MEMORY_MIB_MAX, "MiB")?;

        let disk_mib = self.disk_mib.unwrap_or(DISK_MIB_DEFAULT);
        check_range("disk_size", disk_mib, DISK_MIB_MIN, DISK_MIB_MAX, "MiB")?;

        let cpus = self.cpus.unwrap_or(CPUS_DEFAULT);
        check_range("cpus", cpus, CPUS_MIN, host_cpus.max(CPUS_MIN), "CPUs")?;

        if let Some(image) = &self.image
            && image.trim().is_empty()
        {
            return Err(SpecError::new(
                "image",
                "is empty: omit it for the default image or pass a reference such as file:///path/rootfs.ext4",
            ));
        }

        let backend = match self.backend {
            BackendChoice::Auto | BackendChoice::Qemu => Backend::Qemu,
            BackendChoice::Firecracker => Backend::Firecracker,
        };

        Ok(SandboxSpec {
            os: self.os.unwrap_or_default(),
            image: self.image.clone(),
            memory_mib,
            disk_mib,
            cpus,
            backend,
            network: self.network,
        })
    }
}

fn check_range(field: &str, value: u32, min: u32, max: u32, unit: &str) -> Result<(), SpecError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(SpecError::new(
        field,
        format!(
            "{value} {unit} is outside the allowed range {min}–{max} {unit}; pass a value in that range"
        ),
    ))
}

/// A request to run one command, as the CLI and the HTTP API take it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSpec {
    pub command: String,
    pub shell: ShellMode,
    pub cwd: Option<String>,
    pub env: Vec<(String, String)>,
    /// Seconds; the default applies when absent.
    pub timeout_secs: Option<u64>,
}

impl ExecSpec {
    /// Validates the request and turns it into the agent's form.
    pub fn to_request(&self, window: u64) -> Result<ExecRequest, SpecError> {
        let timeout = self.timeout_secs.unwrap_or(TIMEOUT_SECS_DEFAULT);
        if !(TIMEOUT_SECS_MIN..=TIMEOUT_SECS_MAX).contains(&timeout) {
            return Err(SpecError::new(
                "timeout",
                format!(
                    "{timeout} s is outside the allowed range {TIMEOUT_SECS_MIN}–{TIMEOUT_SECS_MAX} s; pass a value in that range"
                ),
            ));
        }

        let command = self.parse_command()?;
        for (name, value) in &self.env {
            validate_env(name, value)?;
        }
        if let Some(cwd) = &self.cwd
            && cwd.contains('\0')
        {
            return Err(SpecError::new("cwd", "contains a NUL byte"));
        }
        if let Some(cwd) = &self.cwd
            && !cwd.starts_with('/')
        {
            return Err(SpecError::new(
                "cwd",
                format!("{cwd:?} is not an absolute path; pass a path starting with /"),
            ));
        }

        Ok(ExecRequest {
            command,
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            timeout_ms: Some(timeout * 1000),
            stdin: false,
            window,
        })
    }

    /// Returns the timeout that applies, in seconds.
    pub fn timeout_secs(&self) -> u64 {
        self.timeout_secs.unwrap_or(TIMEOUT_SECS_DEFAULT)
    }

    fn parse_command(&self) -> Result<ExecCommand, SpecError> {
        if self.command.trim().is_empty() {
            return Err(SpecError::new(
                "command",
                "is empty; pass the command to run",
            ));
        }
        if self.command.contains('\0') {
            return Err(SpecError::new(
                "command",
                "contains a NUL byte, which no program can receive",
            ));
        }

        match self.shell {
            ShellMode::Login => Ok(ExecCommand::Login {
                command: self.command.clone(),
            }),
            ShellMode::Raw => {
                let argv = shlex::split(&self.command).ok_or_else(|| {
                    SpecError::new(
                        "command",
                        "cannot be split into words: a quote is not closed or a trailing backslash escapes nothing",
                    )
                })?;
                if argv.is_empty() {
                    return Err(SpecError::new(
                        "command",
                        "has no words; pass the program to run",
                    ));
                }
                Ok(ExecCommand::Argv { argv })
            }
        }
    }
}

/// Checks an environment variable name (POSIX portable form) and value.
pub fn validate_env(name: &str, value: &str) -> Result<(), SpecError> {
    let mut chars = name.chars();
    let valid_name = chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric());
    if name.is_empty() {
        return Err(SpecError::new(
            "env",
            "contains a variable with an empty name",
        ));
    }
    if !valid_name {
        return Err(SpecError::new(
            format!("env.{name}"),
            "is not a valid variable name; use letters, digits and underscores, not starting with a digit",
        ));
    }
    if value.contains('\0') {
        return Err(SpecError::new(
            format!("env.{name}"),
            "value contains a NUL byte",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(f: impl FnOnce(&mut CreateRequest)) -> Result<SandboxSpec, SpecError> {
        let mut request = CreateRequest::default();
        f(&mut request);
        request.validate(4)
    }

    #[test]
    fn defaults_fill_in() {
        let spec = create(|_| {}).unwrap();
        assert_eq!(spec.memory_mib, MEMORY_MIB_DEFAULT);
        assert_eq!(spec.disk_mib, DISK_MIB_DEFAULT);
        assert_eq!(spec.cpus, CPUS_DEFAULT);
        assert_eq!(spec.backend, Backend::Qemu);
        assert_eq!(spec.network, NetworkMode::Open);
    }

    #[test]
    fn memory_limits_enforced() {
        assert!(create(|r| r.memory_mib = Some(MEMORY_MIB_MIN)).is_ok());
        assert!(create(|r| r.memory_mib = Some(MEMORY_MIB_MAX)).is_ok());

        let err = create(|r| r.memory_mib = Some(MEMORY_MIB_MIN - 1)).unwrap_err();
        assert_eq!(err.field, "memory");
        assert!(err.problem.contains("128–16384 MiB"), "{err}");

        let err = create(|r| r.memory_mib = Some(MEMORY_MIB_MAX + 1)).unwrap_err();
        assert_eq!(err.field, "memory");
    }

    #[test]
    fn disk_limits_enforced() {
        assert!(create(|r| r.disk_mib = Some(DISK_MIB_MIN)).is_ok());
        let err = create(|r| r.disk_mib = Some(DISK_MIB_MIN - 1)).unwrap_err();
        assert_eq!(err.field, "disk_size");
        assert!(err.problem.contains("512–262144 MiB"), "{err}");
        assert!(create(|r| r.disk_mib = Some(DISK_MIB_MAX + 1)).is_err());
    }

    #[test]
    fn cpus_bounded_by_host() {
        assert!(create(|r| r.cpus = Some(4)).is_ok());
        let err = create(|r| r.cpus = Some(5)).unwrap_err();
        assert_eq!(err.field, "cpus");
        assert!(err.problem.contains("1–4"), "{err}");
        assert_eq!(create(|r| r.cpus = Some(0)).unwrap_err().field, "cpus");
    }

    #[test]
    fn empty_image_rejected() {
        assert_eq!(
            create(|r| r.image = Some(" ".into())).unwrap_err().field,
            "image"
        );
    }

    #[test]
    fn text_enums_parse_and_name_choices() {
        assert_eq!("raw".parse::<ShellMode>().unwrap(), ShellMode::Raw);
        assert_eq!(ShellMode::Login.to_string(), "login");
        let err = "bash".parse::<ShellMode>().unwrap_err();
        assert_eq!(err.field, "shell");
        assert!(err.problem.contains("login, raw"));
        assert_eq!("off".parse::<NetworkMode>().unwrap(), NetworkMode::Off);
        assert_eq!(
            "auto".parse::<BackendChoice>().unwrap(),
            BackendChoice::Auto
        );
    }

    fn exec(f: impl FnOnce(&mut ExecSpec)) -> Result<ExecRequest, SpecError> {
        let mut spec = ExecSpec {
            command: "true".into(),
            ..Default::default()
        };
        f(&mut spec);
        spec.to_request(1024)
    }

    #[test]
    fn raw_command_split_without_expansion() {
        let request = exec(|s| {
            s.shell = ShellMode::Raw;
            s.command = r#"printf '%s\n' 'a b' c $HOME"#.into();
        })
        .unwrap();
        let ExecCommand::Argv { argv } = request.command else {
            panic!("not argv")
        };
        assert_eq!(argv, ["printf", "%s\\n", "a b", "c", "$HOME"]);
    }

    #[test]
    fn raw_command_with_open_quote_rejected() {
        let err = exec(|s| {
            s.shell = ShellMode::Raw;
            s.command = "echo 'open".into();
        })
        .unwrap_err();
        assert_eq!(err.field, "command");
    }

    #[test]
    fn login_command_kept_verbatim() {
        let request = exec(|s| s.command = "echo $HOME | tr a-z A-Z".into()).unwrap();
        assert_eq!(
            request.command,
            ExecCommand::Login {
                command: "echo $HOME | tr a-z A-Z".into()
            }
        );
    }

    #[test]
    fn timeout_limits_enforced() {
        assert_eq!(
            exec(|_| {}).unwrap().timeout_ms,
            Some(TIMEOUT_SECS_DEFAULT * 1000)
        );
        assert!(exec(|s| s.timeout_secs = Some(3600)).is_ok());
        assert_eq!(
            exec(|s| s.timeout_secs = Some(0)).unwrap_err().field,
            "timeout"
        );
        assert_eq!(
            exec(|s| s.timeout_secs = Some(3601)).unwrap_err().field,
            "timeout"
        );
    }

    #[test]
    fn env_names_checked_values_untouched() {
        let request = exec(|s| s.env = vec![("A_1".into(), "it's \"$(x)\"".into())]).unwrap();
        assert_eq!(
            request.env,
            [("A_1".to_owned(), "it's \"$(x)\"".to_owned())]
        );

        let empty = exec(|s| s.env = vec![(String::new(), "v".into())]).unwrap_err();
        assert_eq!(empty.field, "env");
        for bad in ["1A", "A-B", "A=B", "A B"] {
            let err = exec(|s| s.env = vec![(bad.into(), "v".into())]).unwrap_err();
            assert_eq!(err.field, format!("env.{bad}"));
        }
    }

    #[test]
    fn relative_cwd_rejected() {
        assert_eq!(
            exec(|s| s.cwd = Some("tmp".into())).unwrap_err().field,
            "cwd"
        );
        assert!(exec(|s| s.cwd = Some("/tmp".into())).is_ok());
    }

    #[test]
    fn empty_command_rejected() {
        assert_eq!(
            exec(|s| s.command = "  ".into()).unwrap_err().field,
            "command"
        );
    }
}
