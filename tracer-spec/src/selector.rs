//! Kubernetes label selectors in their equality-based form, as `kubectl -l` takes them:
//! `app=web,tier!=db` (`=` and `==` alike), plus the bare `key` (the label is set) and `!key`
//! (it is not). A pod without the label satisfies `key!=value`, as in Kubernetes.

use std::collections::BTreeMap;

/// Why a selector is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// Nothing to select on.
    #[error("empty label selector")]
    Empty,
    /// Longer than 4 KiB.
    #[error("label selector longer than 4096 characters")]
    TooLong,
    /// A key that is no label key (`[prefix/]name`, 63-character name of alphanumerics, `-`, `_`, `.`).
    #[error("{0:?} is not a label key")]
    Key(String),
    /// A value that is no label value (at most 63 alphanumerics, `-`, `_`, `.`).
    #[error("{0:?} is not a label value")]
    Value(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

fn name_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

fn key(s: &str) -> Result<String, SelectorError> {
    let s = s.trim();
    let ok = match s.split_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|p| {
                    !p.is_empty() && p.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                })
                && name_ok(name)
        }
        None => name_ok(s),
    };
    if ok {
        Ok(s.to_owned())
    } else {
        Err(SelectorError::Key(s.to_owned()))
    }
}

fn value(s: &str) -> Result<String, SelectorError> {
    let s = s.trim();
    if s.is_empty() || name_ok(s) {
        Ok(s.to_owned())
    } else {
        Err(SelectorError::Value(s.to_owned()))
    }
}

impl LabelSelector {
    /// Parses `app=web,tier!=db`.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text.len() > 4096 {
            return Err(SelectorError::TooLong);
        }
        if text.trim().is_empty() {
            return Err(SelectorError::Empty);
        }
        let mut out = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let r = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(key(k)?, value(v)?)
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(key(k)?, value(v)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(key(k)?)
            } else {
                Requirement::Exists(key(part)?)
            };
            out.push(r);
        }
        Ok(Self(out))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn equality_and_existence_requirements_match_as_kubernetes_does() {
        let s = LabelSelector::parse("app=web, tier!=db").expect("selector");
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "front")])));
        assert!(s.matches(&labels(&[("app", "web")])), "no tier label satisfies tier!=db");
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("app", "api")])));
        let s = LabelSelector::parse("app.kubernetes.io/name==web,canary,!legacy").expect("selector");
        assert!(s.matches(&labels(&[("app.kubernetes.io/name", "web"), ("canary", "")])));
        assert!(!s.matches(&labels(&[("app.kubernetes.io/name", "web"), ("canary", ""), ("legacy", "1")])));
        for bad in ["", "app=we b", "=web", "a/b/c=1", "Bad.Prefix/x=1", "app=web,", "x=-y"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?}");
        }
    }
}
