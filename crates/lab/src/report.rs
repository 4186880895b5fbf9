//! What a scenario found, and the table and Markdown report made of it.

use std::fmt::Write as _;

/// How a defense fared against an attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The attack got nothing.
    Blocked,
    /// The attack was noticed (an alert, a failed check) — whether or not it got something.
    Detected,
    /// The attack got something, but less than it wanted (scopes, lifetime, rate).
    Limited,
    /// The attack succeeded: a known limit of the defense, stated as such.
    NotBlocked,
    /// Not run against this target (the reason is in the figure).
    Skipped,
}

impl Outcome {
    /// The word in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Blocked => "blocked",
            Outcome::Detected => "detected",
            Outcome::Limited => "limited",
            Outcome::NotBlocked => "NOT blocked",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    /// e.g. `A source leak`.
    pub scenario: String,
    /// What the lab did.
    pub attack: String,
    /// What stood in the way.
    pub defense: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The measured figure.
    pub figure: String,
}

/// One scenario's rows and the notes that explain them.
#[derive(Debug, Clone)]
pub struct Section {
    /// e.g. `A source leak`.
    pub title: String,
    /// Table rows.
    pub findings: Vec<Finding>,
    /// Paragraphs or Markdown tables printed under the scenario's heading.
    pub notes: Vec<String>,
    /// Every check the scenario makes held (the lab exits 1 otherwise).
    pub holds: bool,
}

impl Section {
    /// An empty section.
    pub fn new(title: &str) -> Section {
        Section {
            title: title.to_owned(),
            findings: Vec::new(),
            notes: Vec::new(),
            holds: true,
        }
    }

    /// Records a check: when `ok` is false the section no longer holds and a note says why.
    pub fn check(&mut self, ok: bool, what: &str) {
        if !ok {
            self.holds = false;
            self.notes.push(format!("**Check failed:** {what}."));
        }
    }

    /// Adds a row.
    pub fn row(
        &mut self,
        attack: impl Into<String>,
        defense: impl Into<String>,
        outcome: Outcome,
        figure: impl Into<String>,
    ) {
        self.findings.push(Finding {
            scenario: self.title.clone(),
            attack: attack.into(),
            defense: defense.into(),
            outcome,
            figure: figure.into(),
        });
    }

    /// Adds a note.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }
}

/// A whole lab run.
#[derive(Debug, Clone)]
pub struct Report {
    /// What was attacked, with which sizes, when.
    pub header: Vec<String>,
    /// The scenarios, in order.
    pub sections: Vec<Section>,
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

impl Report {
    /// The table as plain text for a terminal.
    pub fn to_text(&self) -> String {
        let rows: Vec<[String; 5]> = self
            .sections
            .iter()
            .flat_map(|s| &s.findings)
            .map(|f| {
                [
                    f.scenario.clone(),
                    f.attack.clone(),
                    f.defense.clone(),
                    f.outcome.as_str().to_owned(),
                    f.figure.clone(),
                ]
            })
            .collect();
        let headers = ["scenario", "attack", "defense", "outcome", "figure"];
        // Long attack and defense texts would make every row unreadable; cap the columns
        // that wrap poorly and leave the figure whole.
        let caps = [22, 48, 40, 11, usize::MAX];
        let width = |i: usize| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
                .min(caps[i])
        };
        let widths: Vec<usize> = (0..5).map(width).collect();
        let fit = |s: &str, w: usize| -> String {
            let n = s.chars().count();
            if n <= w || w == usize::MAX {
                format!("{s:<w$}", w = if w == usize::MAX { 0 } else { w })
            } else {
                let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
                t.push('…');
                t
            }
        };
        let mut out = String::new();
        for line in &self.header {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out);
        let line = |cols: [&str; 5]| {
            cols.iter()
                .zip(&widths)
                .map(|(c, w)| fit(c, *w))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        let _ = writeln!(out, "{}", line(headers));
        for r in &rows {
            let _ = writeln!(out, "{}", line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
        }
        out
    }

    /// The report as Markdown: the table, then each scenario's notes.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from("# keybound attack lab report\n\n");
        for line in &self.header {
            let _ = writeln!(out, "{line}  ");
        }
        out.push_str(
            "\n| scenario | attack | defense | outcome | figure |\n|---|---|---|---|---|\n",
        );
        for f in self.sections.iter().flat_map(|s| &s.findings) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | **{}** | {} |",
                cell(&f.scenario),
                cell(&f.attack),
                cell(&f.defense),
                f.outcome.as_str(),
                cell(&f.figure)
            );
        }
        for s in &self.sections {
            if s.notes.is_empty() {
                continue;
            }
            let _ = write!(out, "\n## {}\n\n", s.title);
            for n in &s.notes {
                let _ = write!(out, "{n}\n\n");
            }
        }
        out
    }
}

/// `1234567` → `1 234 567`, for counts in reports.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// A large positive number as `5.8e76`.
pub fn sci(x: f64) -> String {
    if x == 0.0 || (1e-3..1e6).contains(&x.abs()) {
        format!("{x:.3}")
    } else {
        format!("{x:.2e}")
    }
}

/// A fraction as a percentage with two decimals.
pub fn pct(num: u64, den: u64) -> String {
    if den == 0 {
        "n/a".into()
    } else {
        format!("{:.2} %", 100.0 * num as f64 / den as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1 234 567");
        assert_eq!(thousands(100), "100");
        assert_eq!(sci(5.79e76), "5.79e76");
        assert_eq!(pct(1, 3), "33.33 %");
        assert_eq!(pct(1, 0), "n/a");
    }

    #[test]
    fn markdown_escapes_pipes_and_lists_notes() {
        let mut s = Section::new("X test");
        s.row("a|b", "d", Outcome::Blocked, "0 accepted");
        s.note("why it holds");
        let r = Report {
            header: vec!["target: in-process".into()],
            sections: vec![s],
        };
        let md = r.to_markdown();
        assert!(
            md.contains("| X test | a\\|b | d | **blocked** | 0 accepted |"),
            "{md}"
        );
        assert!(md.contains("## X test\n\nwhy it holds"));
        assert!(r.to_text().contains("blocked"));
    }
}
