//! Tables and JSON for the comparison harness.

use serde::Serialize;

/// One contender's result on one case.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// Who ran ("fio io_uring", "larder io_uring", …).
    pub contender: String,
    /// Median MB/s (10^6 bytes per second) over the runs, or `None` if it did not run.
    pub mb_per_s: Option<f64>,
    /// Every run's MB/s.
    pub runs: Vec<f64>,
    /// `mb_per_s` divided by the baseline's, when both exist.
    pub ratio_to_baseline: Option<f64>,
    /// Why it did not run, if it did not.
    pub note: Option<String>,
}

/// One case: a row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The case's label.
    pub case: String,
    /// The baseline's name.
    pub baseline: String,
    /// Every contender, baseline first.
    pub results: Vec<Measured>,
}

/// A whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was compared.
    pub title: String,
    /// Conditions (file, size, runs, flags…).
    pub setup: Vec<String>,
    /// What the figures count: "MB/s" (10^6 bytes per second), or "k requests/s".
    pub unit: String,
    /// The rows.
    pub rows: Vec<Row>,
    /// Notes (missing tools, skipped steps).
    pub notes: Vec<String>,
}

impl Measured {
    /// A contender's runs; the median is taken, the ratio filled in later.
    pub fn from_runs(contender: &str, runs: Vec<f64>) -> Self {
        let mb_per_s = (!runs.is_empty()).then(|| super::median(runs.clone()));
        Self { contender: contender.into(), mb_per_s, runs, ratio_to_baseline: None, note: None }
    }

    /// A contender that could not run.
    pub fn missing(contender: &str, note: &str) -> Self {
        Self {
            contender: contender.into(),
            mb_per_s: None,
            runs: vec![],
            ratio_to_baseline: None,
            note: Some(note.into()),
        }
    }
}

impl Row {
    /// A row whose ratios are computed against its first result.
    pub fn new(case: String, mut results: Vec<Measured>) -> Self {
        let base = results.first().and_then(|m| m.mb_per_s);
        for m in &mut results[1..] {
            m.ratio_to_baseline = match (m.mb_per_s, base) {
                (Some(x), Some(b)) if b > 0.0 => Some(x / b),
                _ => None,
            };
        }
        let baseline = results.first().map(|m| m.contender.clone()).unwrap_or_default();
        Self { case, baseline, results }
    }
}

impl Report {
    /// Prints the report as one aligned table: a line per case and contender, each
    /// beside its baseline measured in the same run.
    pub fn print_table(&self) {
        println!("{}", self.title);
        for s in &self.setup {
            println!("  {s}");
        }
        println!();
        let width =
            |f: fn(&Measured) -> usize| self.rows.iter().flat_map(|r| &r.results).map(f).max().unwrap_or(0);
        let name = width(|m| m.contender.len()).max(8);
        let case = self.rows.iter().map(|r| r.case.len()).max().unwrap_or(0).max(4);
        let figure = self.unit.len().max(9);
        println!(
            "{:<case$}  {:<name$} {:>figure$}  {:<name$} {:>figure$} {:>7}",
            "case", "baseline", self.unit, "contender", self.unit, "ratio"
        );
        let mbps = |m: &Measured| m.mb_per_s.map_or_else(|| "-".into(), |v| format!("{v:.0}"));
        for row in &self.rows {
            let Some(base) = row.results.first() else { continue };
            for m in &row.results[1..] {
                let ratio = m.ratio_to_baseline.map_or_else(|| "-".into(), |r| format!("{r:.2}x"));
                println!(
                    "{:<case$}  {:<name$} {:>figure$}  {:<name$} {:>figure$} {:>7}",
                    row.case,
                    base.contender,
                    mbps(base),
                    m.contender,
                    mbps(m),
                    ratio
                );
            }
        }
        for n in &self.notes {
            println!("\nnote: {n}");
        }
    }
}
