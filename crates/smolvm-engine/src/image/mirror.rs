//! Finds the Debian mirror that debootstrap downloads from.
//!
//! The mirror comes from the host's own apt configuration, so no mirror host
//! name is built into smolvm. `SMOLVM_DEBIAN_MIRROR` overrides it.

use std::path::{Path, PathBuf};

use super::ImageError;

/// Environment variable that names the mirror explicitly.
pub const MIRROR_ENV: &str = "SMOLVM_DEBIAN_MIRROR";

/// apt sources in deb822 form, read first.
const DEB822_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";

/// apt sources in one-line form, read when the deb822 file has no mirror.
const ONE_LINE_SOURCES: &str = "/etc/apt/sources.list";

/// One `deb` source: its archive URI and the suites it serves.
#[derive(Debug, PartialEq)]
struct Source {
    uri: String,
    suites: Vec<String>,
}

/// Returns the Debian mirror URL to fetch `suite` from.
pub(crate) fn debian_mirror(suite: &str) -> Result<String, ImageError> {
    if let Some(mirror) = std::env::var(MIRROR_ENV)
        .ok()
        .filter(|m| !m.trim().is_empty())
    {
        return Ok(mirror.trim().to_owned());
    }

    let deb822 = read_optional(Path::new(DEB822_SOURCES))?;
    if let Some(mirror) = deb822.and_then(|text| pick_mirror(&parse_deb822(&text), suite)) {
        return Ok(mirror);
    }

    let one_line = read_optional(Path::new(ONE_LINE_SOURCES))?;
    if let Some(mirror) = one_line.and_then(|text| pick_mirror(&parse_one_line(&text), suite)) {
        return Ok(mirror);
    }

    Err(ImageError::MirrorNotFound {
        sources: vec![
            PathBuf::from(DEB822_SOURCES),
            PathBuf::from(ONE_LINE_SOURCES),
        ],
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, ImageError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(ImageError::io("read", path)(err)),
    }
}

/// Picks the first source that serves `suite` itself. Failing that, it
/// picks the first that serves any release suite, skipping `-security`
/// and `-updates` suites because their archives live at other paths.
/// Failing that too, it picks the first source.
fn pick_mirror(sources: &[Source], suite: &str) -> Option<String> {
    let serves = |s: &&Source| s.suites.iter().any(|x| x == suite);
    let serves_release = |s: &&Source| s.suites.iter().any(|x| !x.contains('-'));

    let chosen = sources
        .iter()
        .find(serves)
        .or_else(|| sources.iter().find(serves_release))
        .or_else(|| sources.first())?;
    Some(chosen.uri.trim_end_matches('/').to_owned())
}

/// Parses deb822 stanzas, keeping enabled ones of type `deb`.
fn parse_deb822(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for stanza in split_stanzas(text) {
        let field = |name: &str| {
            stanza
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        };

        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let enabled = field("Enabled").is_none_or(|e| !e.trim().eq_ignore_ascii_case("no"));
        let uri = field("URIs").and_then(|u| u.split_whitespace().next());
        if let (true, true, Some(uri)) = (is_deb, enabled, uri) {
            let suites = field("Suites")
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned);
            sources.push(Source {
                uri: uri.to_owned(),
                suites: suites.collect(),
            });
        }
    }
    sources
}

/// Splits deb822 text into stanzas of (field, value), joining
/// continuation lines and dropping comments.
fn split_stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stanzas = vec![Vec::new()];
    for line in text.lines() {
        let current: &mut Vec<(String, String)> = stanzas.last_mut().expect("never empty");
        if line.trim().is_empty() {
            if !current.is_empty() {
                stanzas.push(Vec::new());
            }
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            current.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    stanzas.retain(|stanza| !stanza.is_empty());
    stanzas
}

/// Parses `deb [options] URI SUITE COMPONENT...` lines.
fn parse_one_line(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }

        let mut word = words.next();
        if word.is_some_and(|w| w.starts_with('[')) {
            while let Some(option) = word {
                word = words.next();
                if option.ends_with(']') {
                    break;
                }
            }
        }

        if let (Some(uri), Some(suite)) = (word, words.next()) {
            sources.push(Source {
                uri: uri.to_owned(),
                suites: vec![suite.to_owned()],
            });
        }
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# a snapshot comment
URIs: http://security.mirror.invalid/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.mirror.invalid/debian
Suites: bookworm

Types: deb
URIs: http://mirror.invalid/debian/
Suites: bookworm
  bookworm-updates
Components: main
";

    #[test]
    fn deb822_prefers_stanza_serving_suite() {
        let sources = parse_deb822(DEB822);
        assert_eq!(sources.len(), 2, "{sources:?}");
        assert_eq!(sources[1].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(
            pick_mirror(&sources, "bookworm").unwrap(),
            "http://mirror.invalid/debian"
        );
    }

    #[test]
    fn deb822_skips_disabled_stanza() {
        let text = "Types: deb\nURIs: http://off.invalid/debian\nSuites: bookworm\nEnabled: no\n\n\
                    Types: deb\nURIs: http://on.invalid/debian\nSuites: bookworm\n";
        let sources = parse_deb822(text);
        assert_eq!(
            pick_mirror(&sources, "bookworm").unwrap(),
            "http://on.invalid/debian"
        );
    }

    #[test]
    fn deb822_falls_back_to_release_suite() {
        let text = "Types: deb\nURIs: http://sec.invalid/debian-security\nSuites: trixie-security\n\n\
                    Types: deb\nURIs: http://main.invalid/debian\nSuites: trixie trixie-updates\n";
        let sources = parse_deb822(text);
        assert_eq!(
            pick_mirror(&sources, "bookworm").unwrap(),
            "http://main.invalid/debian"
        );
    }

    #[test]
    fn one_line_sources_with_options() {
        let text = "\
# deb http://commented.invalid/debian bookworm main
deb-src http://src.invalid/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://sec.invalid/debian-security bookworm-security main
deb [trusted=yes] http://mirror.invalid/debian bookworm main contrib
";
        let sources = parse_one_line(text);
        assert_eq!(
            sources,
            [
                Source {
                    uri: "http://sec.invalid/debian-security".into(),
                    suites: vec!["bookworm-security".into()]
                },
                Source {
                    uri: "http://mirror.invalid/debian".into(),
                    suites: vec!["bookworm".into()]
                },
            ]
        );
        assert_eq!(
            pick_mirror(&sources, "bookworm").unwrap(),
            "http://mirror.invalid/debian"
        );
    }

    #[test]
    fn no_sources_no_mirror() {
        assert_eq!(pick_mirror(&parse_deb822(""), "bookworm"), None);
        assert_eq!(
            pick_mirror(&parse_one_line("# nothing\n"), "bookworm"),
            None
        );
    }
}
