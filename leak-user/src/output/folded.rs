//! Pure: a report as folded stacks (`root;...;leaf bytes`), the input of flame graphs.
use std::collections::BTreeMap;

use crate::analysis::report::{Report, StackFrame};

/// One line per distinct symbolized stack, outermost frame first, weighted by outstanding
/// bytes; sorted, identical stacks merged, zero-byte sites left out.
#[must_use]
pub fn fold(report: &Report) -> Vec<String> {
    fold_stacks(report.sites.iter().map(|s| (s.stack.as_slice(), s.outstanding_bytes)))
}

/// [`fold`] over any `(stack, weight)` pairs (stacks innermost first).
#[must_use]
pub fn fold_stacks<'a>(items: impl IntoIterator<Item = (&'a [StackFrame], u64)>) -> Vec<String> {
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for (stack, weight) in items.into_iter().filter(|i| i.1 > 0) {
        let line = if stack.is_empty() {
            "[no stack]".to_owned()
        } else {
            stack.iter().rev().map(|f| sanitize(&f.name())).collect::<Vec<_>>().join(";")
        };
        *lines.entry(line).or_default() += weight;
    }
    lines.into_iter().map(|(stack, bytes)| format!("{stack} {bytes}")).collect()
}

/// `;` separates frames and a trailing space-separated number is the count: keep names from
/// containing either ambiguity.
fn sanitize(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::build::tests::sample_report;

    #[test]
    fn folds_outermost_first() {
        let lines = fold(&sample_report());
        assert_eq!(lines, ["main;cache_fn 100", "main;leak_fn 3072"]);
    }

    #[test]
    fn merges_identical_stacks_and_skips_empty_sites() {
        let mut r = sample_report();
        let mut dup = r.sites[0].clone();
        dup.id = "ff".into();
        dup.outstanding_bytes = 8;
        r.sites.push(dup);
        let mut zero = r.sites[1].clone();
        zero.outstanding_bytes = 0;
        zero.stack[0].function = Some("zero_fn".into());
        r.sites.push(zero);
        let mut nostack = r.sites[1].clone();
        nostack.stack.clear();
        r.sites.push(nostack);
        let mut odd = r.sites[1].clone();
        odd.stack[0].function = Some("a;b".into());
        r.sites.push(odd);
        assert_eq!(
            fold(&r),
            ["[no stack] 100", "main;a:b 100", "main;cache_fn 100", "main;leak_fn 3080"]
        );
    }
}
