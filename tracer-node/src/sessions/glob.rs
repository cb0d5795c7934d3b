//! Shell-style wildcards (`*`, `?`) for session pod and container patterns.

/// Whether `text` matches `pattern`, where `*` is any run of characters and `?` any one.
pub fn matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        // A `*` is a wildcard even where the text holds a `*` too (taken as a literal first, it
        // made `*` miss `*A`; found by the glob fuzz target).
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` swallow one more character and retry.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn wildcards_behave_like_the_shell() {
        assert!(matches("jaeger*", "jaeger-operator-7b46f44865-jvgz8"));
        assert!(matches("*", ""));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "ac"));
        assert!(matches("*-op*-*", "jaeger-operator-x"));
        assert!(!matches("jaeger", "jaeger-operator"));
        assert!(matches("ns/*", "ns/pod"));
        assert!(!matches("b*", "abc"));
    }

    #[test]
    fn a_star_in_the_text_does_not_use_up_a_star_of_the_pattern() {
        assert!(matches("*", "*A"));
        assert!(matches("a*", "a*b"));
        assert!(matches("*b", "*ab"));
    }
}
