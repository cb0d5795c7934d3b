//! A session's id and scope as every v1 server reads them: tracer-node, and tracer-svc, which
//! must refuse and authorize exactly what a node would before it forwards anything.

/// The namespace a pod pattern is confined to: `team-a/web*` is confined to `team-a`; `web*`,
/// `*/web` and `te*/web` may select pods of any namespace.
pub fn namespace_of(pod_pattern: &str) -> Option<&str> {
    let (ns, _) = pod_pattern.split_once('/')?;
    (!ns.is_empty() && !ns.contains(['*', '?'])).then_some(ns)
}

/// A session id: a decimal u64 of at most 20 digits (no sign, no spaces); `None` otherwise.
pub fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_literal_namespace_confines_a_pattern() {
        assert_eq!(namespace_of("team-a/web*"), Some("team-a"));
        assert_eq!(namespace_of("web*"), None);
        assert_eq!(namespace_of("*/web"), None);
        assert_eq!(namespace_of("te?m/web"), None);
        assert_eq!(namespace_of("/web"), None);
    }

    #[test]
    fn ids_are_decimal_u64s() {
        assert_eq!(parse_id("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_id("18446744073709551616"), None);
        for bad in ["", "all", "-1", "+1", " 1", "1e3", "0x10"] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }
}
