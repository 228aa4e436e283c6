//! Flame graph SVG from folded lines (inferno). The only module that uses inferno.
use std::io;

use inferno::{
    differential,
    flamegraph::{self, Options, color::BasicPalette, color::Palette},
};

/// Renders folded lines (see `output::folded`) as an SVG weighted in bytes.
///
/// # Errors
/// inferno rejected the input (malformed lines).
pub fn render(lines: &[String], title: &str, subtitle: &str) -> io::Result<Vec<u8>> {
    if lines.is_empty() {
        // inferno turns empty input into an error; an empty graph is a valid answer here.
        return Ok(empty_svg(title, subtitle).into_bytes());
    }
    let mut opts = options(title, subtitle);
    let mut out = Vec::new();
    flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut out)?;
    Ok(out)
}

/// A differential flame graph: widths are the `after` bytes, red frames grew since `before`,
/// blue ones shrank (a stack gone by `after` has no width: the colours show what grew).
///
/// # Errors
/// inferno rejected the input (malformed lines).
pub fn render_diff(
    before: &[String],
    after: &[String],
    title: &str,
    subtitle: &str,
) -> io::Result<Vec<u8>> {
    if after.is_empty() {
        return Ok(empty_svg(title, subtitle).into_bytes());
    }
    let mut merged = Vec::new();
    differential::from_readers(
        differential::Options::default(),
        before.join("\n").as_bytes(),
        after.join("\n").as_bytes(),
        &mut merged,
    )?;
    let merged = String::from_utf8_lossy(&merged);
    let mut opts = options(title, subtitle);
    let mut out = Vec::new();
    flamegraph::from_lines(&mut opts, merged.lines(), &mut out)?;
    Ok(out)
}

fn options(title: &str, subtitle: &str) -> Options<'static> {
    let mut opts = Options::default();
    title.clone_into(&mut opts.title);
    opts.subtitle = Some(subtitle.to_owned());
    "bytes".clone_into(&mut opts.count_name);
    opts.colors = Palette::Basic(BasicPalette::Mem);
    // Colour by name hash: a function keeps its colour from one report to the next.
    opts.hash = true;
    opts
}

fn empty_svg(title: &str, subtitle: &str) -> String {
    let esc = super::escape_markup;
    format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n\
         <svg version=\"1.1\" width=\"1200\" height=\"90\" xmlns=\"http://www.w3.org/2000/svg\">\n\
         <text x=\"600\" y=\"24\" text-anchor=\"middle\" font-size=\"17\">{}</text>\n\
         <text x=\"600\" y=\"48\" text-anchor=\"middle\" font-size=\"12\">{}</text>\n\
         <text x=\"600\" y=\"76\" text-anchor=\"middle\" font-size=\"12\">no outstanding allocations</text>\n\
         </svg>\n",
        esc(title),
        esc(subtitle)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bytes_with_title() {
        let lines = vec!["main;leak_fn 3072".to_owned(), "main;cache_fn 100".to_owned()];
        let svg =
            String::from_utf8(render(&lines, "pid 42 10:00:00-10:00:10", "sub").unwrap()).unwrap();
        assert!(svg.contains("pid 42 10:00:00-10:00:10"));
        assert!(svg.contains("leak_fn"));
        assert!(svg.contains("3,072 bytes"), "count name is bytes");
    }

    #[test]
    fn differential_colours_growth() {
        let before = vec!["main;leak_fn 1000".to_owned(), "main;cache_fn 500".to_owned()];
        let after = vec!["main;leak_fn 3000".to_owned(), "main;cache_fn 500".to_owned()];
        let svg = String::from_utf8(render_diff(&before, &after, "diff", "sub").unwrap()).unwrap();
        assert!(svg.contains("leak_fn (3,000 bytes"), "widths are the after bytes");
        // inferno's differential titles carry the change as a share of the total: +2,000
        // of 3,500 bytes for the leak, nothing for the cache.
        assert!(svg.contains("leak_fn (3,000 bytes, 85.71%; +57.14%)"), "{svg}");
        assert!(svg.contains("cache_fn (500 bytes, 14.29%; 0.00%)"), "{svg}");
    }

    #[test]
    fn empty_input_is_a_valid_svg() {
        let svg = String::from_utf8(render(&[], "t <1>", "s").unwrap()).unwrap();
        assert!(
            svg.starts_with("<?xml") && svg.contains("t &lt;1&gt;") && svg.ends_with("</svg>\n")
        );
    }
}
