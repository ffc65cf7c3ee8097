//! A reusable comparison: scenarios × one figure, forklift's beside the published one,
//! rendered as a text table, an SVG bar chart, and a self-contained HTML report. Used by
//! every `compare` command.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// A table of scenarios, each with the reference figure and forklift's.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The heading: which published experiment and what it measures.
    pub title: String,
    /// How it was measured (the command, the load, the app).
    pub setting: String,
    /// The compared figure, e.g. "time for 100000 requests".
    pub metric: String,
    /// Its unit, e.g. "s" or "req/s".
    pub unit: String,
    /// Whether a bigger figure is better (req/s) or worse (seconds).
    pub higher_is_better: bool,
    /// Names of the extra text columns each row carries.
    pub extra_columns: Vec<String>,
    pub rows: Vec<ComparisonRow>,
    /// Lines printed under the table.
    pub notes: Vec<String>,
}

/// One scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ComparisonRow {
    pub scenario: String,
    /// The reference figure (none when the published figures lack this scenario).
    pub seed: Option<f64>,
    /// forklift's figure (none when the run failed).
    pub ours: Option<f64>,
    /// Values for `extra_columns`, in order.
    pub extra: Vec<String>,
    /// Why there is no figure, or anything else worth a word.
    pub note: Option<String>,
}

impl ComparisonRow {
    /// How many times better forklift is than the reference figure (>1 = better).
    pub fn gain(&self, higher_is_better: bool) -> Option<f64> {
        let (s, o) = (self.seed?, self.ours?);
        if s <= 0.0 || o <= 0.0 {
            return None;
        }
        Some(if higher_is_better { o / s } else { s / o })
    }
}

/// Formats a figure with three significant digits or more (5.23, 16.3, 24213).
pub fn fmt_figure(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_opt(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(v) => format!("{} {unit}", fmt_figure(v)),
        None => "—".to_string(),
    }
}

fn fmt_gain(g: Option<f64>) -> String {
    match g {
        Some(g) => format!("{g:.2}×"),
        None => "—".to_string(),
    }
}

impl Comparison {
    fn header(&self) -> Vec<String> {
        let mut h = vec![
            "scenario".to_string(),
            format!("seed {}", self.metric),
            format!("forklift {}", self.metric),
            "vs seed".to_string(),
        ];
        h.extend(self.extra_columns.iter().cloned());
        h
    }

    fn cells(&self, r: &ComparisonRow) -> Vec<String> {
        let mut c = vec![
            r.scenario.clone(),
            fmt_opt(r.seed, &self.unit),
            match (&r.ours, &r.note) {
                (None, Some(n)) => format!("failed: {n}"),
                _ => fmt_opt(r.ours, &self.unit),
            },
            fmt_gain(r.gain(self.higher_is_better)),
        ];
        for i in 0..self.extra_columns.len() {
            c.push(r.extra.get(i).cloned().unwrap_or_default());
        }
        c
    }

    /// The table as aligned text, title and setting above, notes below.
    pub fn to_text(&self) -> String {
        let header = self.header();
        let rows: Vec<Vec<String>> = self.rows.iter().map(|r| self.cells(r)).collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                let pad = w - c.chars().count();
                if i == 0 {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                } else {
                    s.push_str("  ");
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                }
            }
            s.trim_end().to_string()
        };
        let mut o = format!("{}\n{}\n\n", self.title, self.setting);
        o.push_str(&line(&header));
        o.push('\n');
        let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
        o.push_str(&"-".repeat(total));
        o.push('\n');
        for r in &rows {
            o.push_str(&line(r));
            o.push('\n');
        }
        for n in &self.notes {
            let _ = writeln!(o, "{n}");
        }
        o
    }

    /// A grouped horizontal bar chart: per scenario the reference figure's bar (grey) and
    /// forklift's.
    pub fn to_svg(&self) -> String {
        const W: f64 = 860.0;
        const LABEL_W: f64 = 170.0;
        const BAR_H: f64 = 18.0;
        const GROUP_H: f64 = 52.0;
        const TOP: f64 = 70.0;
        let chart_w = W - LABEL_W - 120.0;
        let max = self
            .rows
            .iter()
            .flat_map(|r| [r.seed, r.ours])
            .flatten()
            .fold(0.0_f64, f64::max);
        let scale = if max > 0.0 { chart_w / max } else { 0.0 };
        let setting = wrap(&self.setting, 135);
        let bottom = TOP + GROUP_H * self.rows.len() as f64 + 10.0;
        let h = bottom + 15.0 * setting.len() as f64 + 10.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="13">"#
        );
        let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
        let _ = writeln!(
            s,
            r#"<text x="10" y="24" font-size="17" font-weight="bold">{}</text>"#,
            esc(&self.title)
        );
        let better = if self.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        let _ = writeln!(
            s,
            r##"<text x="10" y="46" fill="#444">{} ({}, {})</text>"##,
            esc(&self.metric),
            esc(&self.unit),
            better
        );
        for (i, r) in self.rows.iter().enumerate() {
            let y = TOP + GROUP_H * i as f64;
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                LABEL_W - 10.0,
                y + BAR_H + 4.0,
                esc(&r.scenario)
            );
            for (j, (v, fill, who)) in
                [(r.seed, "#b0b0b0", "seed"), (r.ours, "#2b7bb9", "forklift")]
                    .into_iter()
                    .enumerate()
            {
                let by = y + j as f64 * (BAR_H + 2.0);
                let label = match v {
                    Some(v) => format!("{who} {} {}", fmt_figure(v), self.unit),
                    None if j == 1 => {
                        let note = r.note.as_deref().unwrap_or("no figure");
                        format!("{who}: {}", shorten(note, 80))
                    }
                    None => format!("{who}: no figure"),
                };
                let bw = v.map_or(0.0, |v| (v * scale).max(1.0));
                let _ = writeln!(
                    s,
                    r#"<rect x="{LABEL_W}" y="{by}" width="{bw:.1}" height="{BAR_H}" fill="{fill}"><title>{}</title></rect>"#,
                    esc(&label)
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
                    LABEL_W + bw + 6.0,
                    by + BAR_H - 4.0,
                    esc(&label)
                );
            }
        }
        for (i, line) in setting.iter().enumerate() {
            let _ = writeln!(
                s,
                r##"<text x="10" y="{}" fill="#666" font-size="11">{}</text>"##,
                bottom + 15.0 * (i + 1) as f64,
                esc(line)
            );
        }
        s.push_str("</svg>\n");
        s
    }

    /// A self-contained HTML page: title, setting, the chart inline, the table, notes.
    pub fn to_html(&self) -> String {
        let mut o = String::new();
        o.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        let _ = writeln!(o, "<title>{}</title>", esc(&self.title));
        o.push_str(
            "<style>body{font-family:sans-serif;margin:2em;color:#222}\
             table{border-collapse:collapse;margin:1em 0}\
             th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}\
             th:first-child,td:first-child{text-align:left}\
             th{background:#f0f0f0}.setting{color:#555}</style>\n</head>\n<body>\n",
        );
        let _ = writeln!(o, "<h1>{}</h1>", esc(&self.title));
        let _ = writeln!(o, "<p class=\"setting\">{}</p>", esc(&self.setting));
        o.push_str(&self.to_svg());
        o.push_str("<table>\n<thead><tr>");
        for h in self.header() {
            let _ = write!(o, "<th>{}</th>", esc(&h));
        }
        o.push_str("</tr></thead>\n<tbody>\n");
        for r in &self.rows {
            o.push_str("<tr>");
            for c in self.cells(r) {
                let _ = write!(o, "<td>{}</td>", esc(&c));
            }
            o.push_str("</tr>\n");
        }
        o.push_str("</tbody>\n</table>\n");
        for n in &self.notes {
            let _ = writeln!(o, "<p>{}</p>", esc(n));
        }
        o.push_str("</body>\n</html>\n");
        o
    }

    /// Writes `DIR/STEM.svg`, `DIR/STEM.html` and `DIR/STEM.json`, creating DIR.
    pub fn write_files(&self, dir: &Path, stem: &str) -> io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        let mut out = Vec::new();
        for (ext, content) in [
            ("svg", self.to_svg()),
            ("html", self.to_html()),
            ("json", json),
        ] {
            let p = dir.join(format!("{stem}.{ext}"));
            std::fs::write(&p, content)?;
            out.push(p);
        }
        Ok(out)
    }
}

/// Splits `s` into lines of at most `width` characters at spaces (a longer word stays whole).
fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in s.split_whitespace() {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Cuts `s` to at most `max` characters, marking the cut with an ellipsis.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut o: String = s.chars().take(max.saturating_sub(1)).collect();
        o.push('…');
        o
    }
}

/// Escapes text for XML / HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Comparison {
        Comparison {
            title: "Seed 003 <models>".into(),
            setting: "-n 100000 -c 8 & close".into(),
            metric: "time".into(),
            unit: "s".into(),
            higher_is_better: false,
            extra_columns: vec!["req/s".into()],
            rows: vec![
                ComparisonRow {
                    scenario: "linear".into(),
                    seed: Some(5.23),
                    ours: Some(2.615),
                    extra: vec!["38241".into()],
                    note: None,
                },
                ComparisonRow {
                    scenario: "async".into(),
                    seed: None,
                    ours: None,
                    extra: vec![],
                    note: Some("did not start".into()),
                },
            ],
            notes: vec!["a note".into()],
        }
    }

    #[test]
    fn figures_and_gain() {
        assert_eq!(fmt_figure(5.23), "5.230");
        assert_eq!(fmt_figure(16.346), "16.35");
        assert_eq!(fmt_figure(123.45), "123.5");
        assert_eq!(fmt_figure(24213.4), "24213");
        let c = sample();
        assert_eq!(c.rows[0].gain(false), Some(2.0));
        assert_eq!(c.rows[0].gain(true), Some(0.5));
        assert_eq!(c.rows[1].gain(false), None);
    }

    #[test]
    fn text_table() {
        let t = sample().to_text();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "Seed 003 <models>");
        assert!(lines[3].starts_with("scenario  seed time  "), "{t}");
        assert!(lines[3].contains("forklift time  vs seed  req/s"), "{t}");
        assert!(t.contains("linear      5.230 s"), "{t}");
        assert!(t.contains("2.00×"), "{t}");
        assert!(t.contains("failed: did not start"), "{t}");
        assert!(t.ends_with("a note\n"));
    }

    #[test]
    fn svg_and_html_escape() {
        let c = sample();
        let svg = c.to_svg();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains("Seed 003 &lt;models&gt;"));
        assert!(svg.contains("&amp; close"));
        assert!(svg.trim_end().ends_with("</svg>"));
        let html = c.to_html();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<td>linear</td>"));
        assert!(html.trim_end().ends_with("</html>"));
        assert_eq!(esc("a\u{1}b'"), "a b&#39;");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
        assert_eq!(wrap("aa bb cc dddddd e", 5), ["aa bb", "cc", "dddddd", "e"]);
        assert!(wrap("", 5).is_empty());
    }
}
