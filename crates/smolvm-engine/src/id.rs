//! Sandbox identifiers: `sbx-` followed by 10 lowercase letters and digits.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "sbx-";
const SUFFIX_LEN: usize = 10;
/// Letters and digits without look-alikes (no 0/o, 1/l/i), so ids survive
/// being read aloud or copied by hand.
const ALPHABET: &[u8] = b"23456789abcdefghjkmnpqrstuvwxyz";

/// Identifier of one sandbox, unique on a host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxId(String);

impl SandboxId {
    /// Creates a new random id. 31^10 values make a collision on one host
    /// vanishingly unlikely; the store's primary key catches it anyway.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let suffix: String = (0..SUFFIX_LEN)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        Self(format!("{PREFIX}{suffix}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Error for a string that is not a sandbox id.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid sandbox id {value:?}: expected `sbx-` followed by 10 letters and digits, as printed by `smolvm sandbox create`"
)]
pub struct InvalidSandboxId {
    pub value: String,
}

impl FromStr for SandboxId {
    type Err = InvalidSandboxId;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let valid = value.strip_prefix(PREFIX).is_some_and(|suffix| {
            suffix.len() == SUFFIX_LEN && suffix.bytes().all(|b| ALPHABET.contains(&b))
        });
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidSandboxId {
                value: value.to_owned(),
            })
        }
    }
}

impl TryFrom<String> for SandboxId {
    type Error = InvalidSandboxId;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<SandboxId> for String {
    fn from(id: SandboxId) -> Self {
        id.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back() {
        for _ in 0..100 {
            let id = SandboxId::generate();
            assert_eq!(id.as_str().parse::<SandboxId>().unwrap(), id);
        }
    }

    #[test]
    fn malformed_ids_rejected() {
        for bad in [
            "",
            "sbx-",
            "sbx-abc",
            "vm-abcdefghjk",
            "sbx-ABCDEFGHJK",
            "sbx-abcdefghjk/..",
        ] {
            assert!(bad.parse::<SandboxId>().is_err(), "{bad:?} accepted");
        }
    }
}
