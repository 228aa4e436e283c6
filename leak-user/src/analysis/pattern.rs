//! Pure: shell-style patterns, as `--process`, `--namespace` and `--fold` take them.

/// Shell-style matching of the whole of `text`: `*` any run of characters, `?` one.
#[must_use]
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matching with one backtrack point: the last `*` and where it was tried.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` take one more character.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        for (p, t) in [
            ("api-*", "api-7d9f8-x2x"),
            ("*", ""),
            ("*", "anything"),
            ("redis", "redis"),
            ("re?is", "redis"),
            ("*-worker-*", "billing-worker-12"),
            ("a*b*c", "aXbYbZc"),
        ] {
            assert!(glob(p, t), "{p} {t}");
        }
        for (p, t) in [("api-*", "web-1"), ("redis", "redis-server"), ("?", ""), ("a*c", "ab")] {
            assert!(!glob(p, t), "{p} {t}");
        }
    }
}
