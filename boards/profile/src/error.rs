//! Profile errors: every one names the file and, where there is one, the key.

use std::fmt;

use serde::de::DeserializeOwned;

/// One invalid value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key (`adaptation.memory_budget_mb`, `engine.order[1]`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Loading a profile failed.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or a key is missing, unknown or of the wrong type.
    #[error("{file}{}: {}{message}", line.map(|l| format!(":{l}")).unwrap_or_default(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Parse {
        /// The file.
        file: String,
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// Dotted key (empty for the top level or a syntax error).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Values out of range or inconsistent.
    #[error("{file}: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// The file.
        file: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
    /// No profile by that name.
    #[error(
        "unknown board `{name}`: shipped profiles are {known}; or give the path of a .toml file"
    )]
    UnknownBoard {
        /// The name asked for.
        name: String,
        /// The shipped names.
        known: String,
    },
}

/// Deserializes `text`, turning serde's messages into "key: what is wrong".
pub(crate) fn parse<T: DeserializeOwned>(text: &str, file: &str) -> Result<T, ProfileError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = e.into_inner();
        // An empty or whole-document span at 0 (a missing top-level table) points nowhere useful.
        let line = inner
            .span()
            .filter(|s| !(s.start == 0 && (s.end == 0 || s.end >= text.len())))
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let one_line = inner.message().trim().replace('\n', "; ");
        let (key, message) = explain(&path, &one_line);
        ProfileError::Parse {
            file: file.to_string(),
            line,
            key,
            message,
        }
    })
}

/// Moves the field a serde message names into the key: `missing field `x`` at `a` becomes
/// key `a.x`, "required key is missing".
fn explain(path: &str, message: &str) -> (String, String) {
    // The path may already end in the field (unknown keys) or stop at its table (missing).
    let join = |field: &str| {
        if path == field || path.ends_with(&format!(".{field}")) {
            path.to_string()
        } else if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        }
    };
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some(field) = rest.strip_suffix('`') {
            return (join(field), "required key is missing".to_string());
        }
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once('`') {
            let expected = expected.trim_start_matches(',').trim();
            let expected = expected
                .strip_prefix("expected one of ")
                .or_else(|| expected.strip_prefix("expected "))
                .unwrap_or(expected);
            let msg = if expected.is_empty() {
                "unknown key".to_string()
            } else {
                format!("unknown key (known keys here: {expected})")
            };
            return (join(field), msg);
        }
    }
    (path.to_string(), message.to_string())
}

#[cfg(test)]
mod tests {
    use super::explain;

    #[test]
    fn explain_moves_the_field_into_the_key() {
        assert_eq!(
            explain("adaptation", "missing field `batch_labeled`"),
            (
                "adaptation.batch_labeled".into(),
                "required key is missing".into()
            )
        );
        assert_eq!(
            explain("adaptation.foo", "unknown field `foo`, expected `x`"),
            (
                "adaptation.foo".into(),
                "unknown key (known keys here: `x`)".into()
            )
        );
        assert_eq!(
            explain(
                "",
                "unknown field `boards`, expected one of `board`, `engine`"
            ),
            (
                "boards".into(),
                "unknown key (known keys here: `board`, `engine`)".into()
            )
        );
        assert_eq!(
            explain(
                "thermal.ceiling_c",
                "invalid type: string \"hot\", expected f32"
            ),
            (
                "thermal.ceiling_c".into(),
                "invalid type: string \"hot\", expected f32".into()
            )
        );
    }
}
