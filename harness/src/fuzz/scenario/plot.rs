//! `lunavm fuzz --plot`: coverage over time from `progress.log`, as an SVG
//! image (one line per process, blocks seen against seconds).

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One progress sample: (seconds, execs, blocks, unique crashes).
type Sample = (f64, u64, u64, u64);

/// Parses `progress.log` lines `PID SECONDS EXECS BLOCKS CRASHES` by process.
pub fn parse(log: &str) -> BTreeMap<u64, Vec<Sample>> {
    let mut out: BTreeMap<u64, Vec<Sample>> = BTreeMap::new();
    for line in log.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 5 {
            continue;
        }
        let (Ok(pid), Ok(t), Ok(e), Ok(b), Ok(c)) = (
            f[0].parse::<u64>(),
            f[1].parse::<f64>(),
            f[2].parse::<u64>(),
            f[3].parse::<u64>(),
            f[4].parse::<u64>(),
        ) else {
            continue;
        };
        out.entry(pid).or_default().push((t, e, b, c));
    }
    out
}

/// The SVG for `log`, titled `title`.
pub fn coverage_svg(log: &str, title: &str) -> String {
    let runs = parse(log);
    let (w, h, m) = (720.0, 420.0, 60.0);
    let max_t = runs.values().flatten().map(|s| s.0).fold(1.0_f64, f64::max);
    let max_b = runs
        .values()
        .flatten()
        .map(|s| s.2)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |t: f64| m + t / max_t * (w - 2.0 * m);
    let y = |b: f64| h - m - b / max_b * (h - 2.0 * m);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        s,
        "<text x=\"{m}\" y=\"24\" font-size=\"14\">lunavm fuzz: guest blocks covered over time — {}</text>",
        escape(title)
    );
    let _ = writeln!(
        s,
        "<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>",
        h - m,
        w - m,
        h - m,
        h - m
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max_t:.0} s</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max_b:.0} blocks</text><text x=\"{m}\" y=\"{}\">0</text>",
        w - m,
        h - m + 18.0,
        m - 4.0,
        m + 4.0,
        h - m + 18.0
    );
    let colours = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    for (i, samples) in runs.values().enumerate() {
        let pts: Vec<String> = samples
            .iter()
            .map(|&(t, _, b, _)| format!("{:.1},{:.1}", x(t), y(b as f64)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            colours[i % colours.len()],
            pts.join(" ")
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_has_one_line_per_process_scaled_to_the_maximum() {
        let log = "10 0.5 100 4 0\n10 2.0 900 9 1\n11 1.0 50 2 0\ngarbage line\n";
        let runs = parse(log);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[&10], vec![(0.5, 100, 4, 0), (2.0, 900, 9, 1)]);
        let svg = coverage_svg(log, "a<b");
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("9 blocks") && svg.contains("2 s") && svg.contains("a&lt;b"));
    }
}
