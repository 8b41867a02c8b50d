//! QEMU command lines for sandboxes on the `microvm` machine type.
//!
//! Building the arguments is a pure function of [`QemuConfig`], so the
//! exact command line is covered by unit tests without starting QEMU.

use std::path::PathBuf;

use crate::accel::Accel;

/// Name of the virtio-serial port the agent serves on, as it appears in the guest
/// under `/sys/class/virtio-ports/*/name`.
pub const AGENT_PORT_NAME: &str = "org.smolvm.agent";

/// Guest-side kernel arguments that boot fast and reliably under TCG:
/// one UART, no timer check or watchdogs, no PCI scan, no keyboard
/// controller probing, and a reboot (which `-no-reboot` turns into a QEMU
/// exit) on panic instead of a hang.
const BASE_KERNEL_ARGS: &[&str] = &[
    "console=ttyS0",
    "quiet",
    "8250.nr_uarts=1",
    "no_timer_check",
    "tsc=reliable",
    "i8042.noaux",
    "i8042.nomux",
    "i8042.nopnp",
    "i8042.dumbkbd",
    "random.trust_cpu=on",
    "cryptomgr.notests",
    "audit=0",
    "nowatchdog",
    "pci=off",
    "panic=-1",
];

/// Everything that varies between sandbox command lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The sandbox's qcow2 overlay on the image's root disk.
    pub disk: PathBuf,
    pub agent_socket: PathBuf,
    pub qmp_socket: PathBuf,
    pub console_log: PathBuf,
    /// Attach a NIC with QEMU's user-mode network.
    pub network: bool,
    pub hostname: String,
    /// Host TSC frequency; without `tsc_early_khz` about one TCG boot in
    /// six hangs calibrating the clock.
    pub tsc_khz: Option<u64>,
}

impl QemuConfig {
    /// Returns the kernel command line.
    pub fn kernel_cmdline(&self) -> String {
        let mut args: Vec<String> = BASE_KERNEL_ARGS.iter().map(|s| s.to_string()).collect();
        if let Some(khz) = self.tsc_khz {
            args.push(format!("tsc_early_khz={khz}"));
        }
        args.push(format!("smolvm.hostname={}", self.hostname));
        if self.network {
            args.push("smolvm.net=1".into());
        }
        args.join(" ")
    }

    /// Returns the arguments after the program name.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        let mut push = |parts: &[&str]| args.extend(parts.iter().map(|s| s.to_string()));

        push(&["-M", "microvm"]);
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
        }
        push(&[
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            &self.cpus.to_string(),
        ]);
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);

        let console = format!("file,id=console,path={}", escape(&self.console_log));
        push(&["-chardev", &console, "-serial", "chardev:console"]);

        push(&["-kernel", &self.kernel.to_string_lossy()]);
        push(&["-initrd", &self.initrd.to_string_lossy()]);
        push(&["-append", &self.kernel_cmdline()]);

        // discard=unmap passes the guest's TRIMs to the overlay, so files
        // deleted in the guest do not keep the qcow2 file large.
        let drive = format!(
            "id=root,file={},format=qcow2,if=none,discard=unmap,detect-zeroes=unmap",
            escape(&self.disk)
        );
        push(&["-drive", &drive, "-device", "virtio-blk-device,drive=root"]);

        let agent = format!(
            "socket,id=agent,path={},server=on,wait=off",
            escape(&self.agent_socket)
        );
        let port = format!("virtserialport,chardev=agent,name={AGENT_PORT_NAME}");
        push(&[
            "-device",
            "virtio-serial-device",
            "-chardev",
            &agent,
            "-device",
            &port,
        ]);

        if self.network {
            push(&[
                "-netdev",
                "user,id=net0",
                "-device",
                "virtio-net-device,netdev=net0",
            ]);
        }

        let qmp = format!("unix:{},server=on,wait=off", escape(&self.qmp_socket));
        push(&["-qmp", &qmp]);
        args
    }
}

/// Escapes a path for a QEMU option value, where a comma separates
/// options and is written twice to stand for itself.
fn escape(path: &std::path::Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QemuConfig {
        QemuConfig {
            accel: Accel::Tcg,
            memory_mib: 512,
            cpus: 2,
            kernel: "/img/vmlinuz".into(),
            initrd: "/img/initrd.img".into(),
            disk: "/sbx/disk.qcow2".into(),
            agent_socket: "/sbx/agent.sock".into(),
            qmp_socket: "/sbx/qmp.sock".into(),
            console_log: "/sbx/console.log".into(),
            network: true,
            hostname: "sbx-abc".into(),
            tsc_khz: Some(2_600_000),
        }
    }

    #[test]
    #[rustfmt::skip]
    fn tcg_command_line_exact() {
        let args = config().args();
        let expected = [
            "-M", "microvm",
            "-accel", "tcg", "-cpu", "max",
            "-m", "512", "-smp", "2",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-chardev", "file,id=console,path=/sbx/console.log", "-serial", "chardev:console",
            "-kernel", "/img/vmlinuz",
            "-initrd", "/img/initrd.img",
            "-append", &config().kernel_cmdline(),
            "-drive", "id=root,file=/sbx/disk.qcow2,format=qcow2,if=none,discard=unmap,detect-zeroes=unmap",
            "-device", "virtio-blk-device,drive=root",
            "-device", "virtio-serial-device",
            "-chardev", "socket,id=agent,path=/sbx/agent.sock,server=on,wait=off",
            "-device", "virtserialport,chardev=agent,name=org.smolvm.agent",
            "-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0",
            "-qmp", "unix:/sbx/qmp.sock,server=on,wait=off",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn kvm_uses_host_cpu() {
        let args = QemuConfig {
            accel: Accel::Kvm,
            ..config()
        }
        .args();
        let joined = args.join(" ");
        assert!(joined.contains("-accel kvm -cpu host"), "{joined}");
    }

    #[test]
    fn network_off_leaves_nic_out() {
        let config = QemuConfig {
            network: false,
            ..config()
        };
        let joined = config.args().join(" ");
        assert!(!joined.contains("-netdev"), "{joined}");
        assert!(!joined.contains("virtio-net"), "{joined}");
        assert!(!config.kernel_cmdline().contains("smolvm.net=1"));
    }

    #[test]
    fn kernel_cmdline_carries_tsc_and_hostname() {
        let cmdline = config().kernel_cmdline();
        assert!(cmdline.starts_with("console=ttyS0 quiet"), "{cmdline}");
        assert!(cmdline.contains("tsc_early_khz=2600000"), "{cmdline}");
        assert!(cmdline.contains("smolvm.hostname=sbx-abc"), "{cmdline}");
        assert!(cmdline.contains("smolvm.net=1"), "{cmdline}");
        assert!(cmdline.contains("pci=off"), "{cmdline}");

        let without_tsc = QemuConfig {
            tsc_khz: None,
            ..config()
        }
        .kernel_cmdline();
        assert!(!without_tsc.contains("tsc_early_khz"), "{without_tsc}");
    }

    #[test]
    fn commas_in_paths_escaped() {
        let config = QemuConfig {
            disk: "/a,b/disk.qcow2".into(),
            ..config()
        };
        let joined = config.args().join(" ");
        assert!(
            joined.contains("file=/a,,b/disk.qcow2,format=qcow2"),
            "{joined}"
        );
    }
}
