//! Finding the guest agent binary and checking that it is static.
//!
//! The agent runs as `/init` in an initramfs that has no dynamic loader or
//! C library, so only a statically linked x86-64 ELF executable can start.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::ImageError;

/// Environment variable that names the agent binary explicitly.
pub const AGENT_BIN_ENV: &str = "SMOLVM_AGENT_BIN";

const AGENT_FILE: &str = "smolvm-agent";

/// Output folder of the static agent build in scripts/build.sh, relative to `target/`.
const STATIC_BUILD_DIR: &str = "x86_64-unknown-linux-gnu/agent";

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_INTERP: u32 = 3;
const ELF64_HEADER_LEN: usize = 64;

/// Finds the static agent binary: `$SMOLVM_AGENT_BIN`, else `smolvm-agent`
/// beside the running executable, else the static build output of
/// scripts/build.sh in the `target/` folder that contains the executable.
pub fn locate_agent_binary() -> Result<PathBuf, ImageError> {
    if let Some(path) = std::env::var_os(AGENT_BIN_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(ImageError::AgentNotFound {
                searched: vec![path],
            });
        }
        check_static_elf(&path)?;
        return Ok(path);
    }

    let exe = std::env::current_exe().map_err(ImageError::io("resolve", "/proc/self/exe"))?;
    first_static(&candidate_paths(&exe))
}

/// Lists the places to look for the agent, given the running executable.
fn candidate_paths(exe: &Path) -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join(AGENT_FILE));
        candidates.push(dir.join("..").join(STATIC_BUILD_DIR).join(AGENT_FILE));
    }

    // Test binaries live deeper, in target/debug/deps/.
    let targets = exe
        .ancestors()
        .filter(|dir| dir.file_name().is_some_and(|n| n == "target"));
    for target in targets {
        candidates.push(target.join(STATIC_BUILD_DIR).join(AGENT_FILE));
    }
    candidates.dedup();
    candidates
}

/// Returns the first candidate that is a static ELF executable. When files
/// exist but none is static, the error is about the first of them.
fn first_static(candidates: &[PathBuf]) -> Result<PathBuf, ImageError> {
    let mut first_error = None;
    for candidate in candidates.iter().filter(|c| c.is_file()) {
        match check_static_elf(candidate) {
            Ok(()) => return Ok(candidate.clone()),
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| ImageError::AgentNotFound {
        searched: candidates.to_vec(),
    }))
}

/// Checks that `path` is an x86-64 ELF executable with no `PT_INTERP`
/// program header, that is, one that needs no dynamic loader.
pub(crate) fn check_static_elf(path: &Path) -> Result<(), ImageError> {
    let mut file = File::open(path).map_err(ImageError::io("open", path))?;
    let not_elf = || ImageError::AgentNotElf {
        path: path.to_owned(),
    };

    let mut header = [0u8; ELF64_HEADER_LEN];
    file.read_exact(&mut header).map_err(|_| not_elf())?;
    let u16_at = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
    let is_x86_64_executable = &header[..4] == ELF_MAGIC
        && header[4] == ELFCLASS64
        && header[5] == ELFDATA2LSB
        && matches!(u16_at(16), ET_EXEC | ET_DYN)
        && u16_at(18) == EM_X86_64;
    if !is_x86_64_executable {
        return Err(not_elf());
    }

    let phoff = u64::from_le_bytes(header[32..40].try_into().expect("8 bytes"));
    let (phentsize, phnum) = (usize::from(u16_at(54)), usize::from(u16_at(56)));
    if phentsize < 4 {
        return Err(not_elf());
    }
    // Cannot be large: phentsize and phnum are 16-bit, so at most 4 GiB.
    let mut table = vec![0u8; phentsize * phnum];
    file.seek(SeekFrom::Start(phoff)).map_err(|_| not_elf())?;
    file.read_exact(&mut table).map_err(|_| not_elf())?;

    let has_interp = table
        .chunks_exact(phentsize)
        .any(|entry| u32::from_le_bytes(entry[..4].try_into().expect("4 bytes")) == PT_INTERP);
    if has_interp {
        return Err(ImageError::AgentNotStatic {
            path: path.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PT_LOAD: u32 = 1;
    const PHENTSIZE: u16 = 56;

    /// Builds a minimal ELF64 executable image with the given program
    /// header types and no code.
    fn tiny_elf(program_headers: &[u32]) -> Vec<u8> {
        let mut elf = vec![0u8; ELF64_HEADER_LEN];
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = ELFCLASS64;
        elf[5] = ELFDATA2LSB;
        elf[6] = 1; // EI_VERSION
        elf[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        elf[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        elf[32..40].copy_from_slice(&(ELF64_HEADER_LEN as u64).to_le_bytes());
        elf[52..54].copy_from_slice(&(ELF64_HEADER_LEN as u16).to_le_bytes());
        elf[54..56].copy_from_slice(&PHENTSIZE.to_le_bytes());
        elf[56..58].copy_from_slice(&(program_headers.len() as u16).to_le_bytes());
        for kind in program_headers {
            let mut entry = vec![0u8; usize::from(PHENTSIZE)];
            entry[..4].copy_from_slice(&kind.to_le_bytes());
            elf.extend(entry);
        }
        elf
    }

    fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn static_elf_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "static", &tiny_elf(&[PT_LOAD, PT_LOAD]));
        check_static_elf(&path).unwrap();
    }

    #[test]
    fn elf_with_interpreter_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "dynamic", &tiny_elf(&[PT_LOAD, PT_INTERP]));
        let err = check_static_elf(&path).unwrap_err();
        assert!(matches!(err, ImageError::AgentNotStatic { .. }), "{err}");
        assert!(err.to_string().contains("scripts/build.sh"), "{err}");
    }

    #[test]
    fn system_shell_is_dynamic() {
        let err = check_static_elf(Path::new("/bin/sh")).unwrap_err();
        assert!(matches!(err, ImageError::AgentNotStatic { .. }), "{err}");
    }

    #[test]
    fn non_elf_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let script = write_file(dir.path(), "script", b"#!/bin/sh\necho hi\n");
        let truncated = write_file(dir.path(), "truncated", &tiny_elf(&[PT_LOAD])[..70]);
        let mut arm = tiny_elf(&[PT_LOAD]);
        arm[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
        let arm = write_file(dir.path(), "arm", &arm);

        for path in [script, truncated, arm] {
            let err = check_static_elf(&path).unwrap_err();
            assert!(
                matches!(err, ImageError::AgentNotElf { .. }),
                "{}: {err}",
                path.display()
            );
        }
    }

    #[test]
    fn candidates_cover_build_layouts() {
        let exe = Path::new("/src/smolvm/target/debug/deps/engine-0123");
        let candidates = candidate_paths(exe);
        assert_eq!(
            candidates,
            [
                PathBuf::from("/src/smolvm/target/debug/deps/smolvm-agent"),
                PathBuf::from(
                    "/src/smolvm/target/debug/deps/../x86_64-unknown-linux-gnu/agent/smolvm-agent"
                ),
                PathBuf::from("/src/smolvm/target/x86_64-unknown-linux-gnu/agent/smolvm-agent"),
            ]
        );
    }

    #[test]
    fn first_static_skips_dynamic_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing/smolvm-agent");
        let dynamic = write_file(dir.path(), "dynamic/smolvm-agent", &tiny_elf(&[PT_INTERP]));
        let good = write_file(dir.path(), "static/smolvm-agent", &tiny_elf(&[PT_LOAD]));

        let found = first_static(&[missing.clone(), dynamic.clone(), good.clone()]).unwrap();
        assert_eq!(found, good);

        let err = first_static(&[missing.clone(), dynamic]).unwrap_err();
        assert!(matches!(err, ImageError::AgentNotStatic { .. }), "{err}");

        let err = first_static(std::slice::from_ref(&missing)).unwrap_err();
        let ImageError::AgentNotFound { searched } = &err else {
            panic!("unexpected error {err}");
        };
        assert_eq!(searched, &[missing]);
        assert!(err.to_string().contains("scripts/build.sh"), "{err}");
    }
}
