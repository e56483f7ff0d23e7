//! Medians of repeated runs and the table the benchmark prints.

use std::fmt;

/// The median of `values` (the mean of the middle two for an even count), `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

/// A unit a row's figures are printed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Microseconds.
    Micros,
    /// Milliseconds.
    Millis,
    /// Mebibytes.
    Mebibytes,
    /// A plain ratio.
    Ratio,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Self::Micros => "µs",
            Self::Millis => "ms",
            Self::Mebibytes => "MiB",
            Self::Ratio => "",
        }
    }

    fn decimals(self) -> usize {
        match self {
            Self::Micros | Self::Millis => 3,
            Self::Mebibytes => 2,
            Self::Ratio => 3,
        }
    }
}

/// One line of the table: a median over runs, its spread, and a target if it has one.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// How much: e.g. `9 runs × 20000 exits`.
    pub n: String,
    /// The median.
    pub median: f64,
    /// The smallest and largest run.
    pub range: Option<(f64, f64)>,
    /// The unit of `median` and `range`.
    pub unit: Unit,
    /// The largest acceptable median.
    pub target: Option<f64>,
}

impl Row {
    /// A row for the median of `samples`; `None` when there are none.
    pub fn of_samples(
        name: impl Into<String>,
        n: impl Into<String>,
        samples: &[f64],
        unit: Unit,
        target: Option<f64>,
    ) -> Option<Self> {
        let min = samples.iter().copied().reduce(f64::min)?;
        let max = samples.iter().copied().reduce(f64::max)?;
        Some(Self {
            name: name.into(),
            n: n.into(),
            median: median(samples)?,
            range: Some((min, max)),
            unit,
            target,
        })
    }

    /// Whether the median meets the target (`None` without a target).
    pub fn meets_target(&self) -> Option<bool> {
        self.target.map(|target| self.median <= target)
    }
}

/// The printed table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    /// The rows, in order.
    pub rows: Vec<Row>,
}

impl Table {
    /// Whether every row with a target meets it.
    pub fn all_targets_met(&self) -> bool {
        self.rows
            .iter()
            .all(|row| row.meets_target() != Some(false))
    }
}

fn figure(value: f64, unit: Unit) -> String {
    let suffix = unit.suffix();
    let number = format!("{value:.*}", unit.decimals());
    if suffix.is_empty() {
        number
    } else {
        format!("{number} {suffix}")
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widest = |field: fn(&Row) -> usize| self.rows.iter().map(field).max().unwrap_or(0);
        let name_width = widest(|r| r.name.len()).max(9);
        let n_width = widest(|r| r.n.len()).max(1);
        writeln!(
            f,
            "{:<name_width$}  {:<n_width$}  {:>12}  {:>25}  {:>12}",
            "benchmark", "N", "median", "min .. max", "target"
        )?;
        for row in &self.rows {
            let range = row.range.map_or_else(String::new, |(min, max)| {
                format!("{} .. {}", figure(min, row.unit), figure(max, row.unit))
            });
            let target = match (row.target, row.meets_target()) {
                (Some(target), Some(met)) => {
                    format!(
                        "≤ {} {}",
                        figure(target, row.unit),
                        if met { "ok" } else { "MISSED" }
                    )
                }
                _ => String::new(),
            };
            let line = format!(
                "{:<name_width$}  {:<n_width$}  {:>12}  {:>25}  {:>12}",
                row.name,
                row.n,
                figure(row.median, row.unit),
                range,
                target
            );
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn rows_and_targets() {
        assert!(Row::of_samples("x", "0", &[], Unit::Micros, None).is_none());
        let ok = Row::of_samples(
            "exit",
            "3 runs",
            &[9.0, 10.0, 30.0],
            Unit::Micros,
            Some(12.0),
        )
        .unwrap();
        assert_eq!((ok.median, ok.range), (10.0, Some((9.0, 30.0))));
        assert_eq!(ok.meets_target(), Some(true));
        let missed = Row::of_samples(
            "ratio",
            "3 pairs",
            &[1.2, 1.1, 1.3],
            Unit::Ratio,
            Some(1.05),
        )
        .unwrap();
        assert_eq!(missed.meets_target(), Some(false));
        let plain = Row::of_samples("rss", "1 run", &[2.0], Unit::Mebibytes, None).unwrap();
        assert_eq!(plain.meets_target(), None);

        let mut table = Table {
            rows: vec![ok.clone(), plain],
        };
        assert!(table.all_targets_met());
        let text = table.to_string();
        assert!(text.starts_with("benchmark"), "{text}");
        assert!(text.contains("10.000 µs"), "{text}");
        assert!(text.contains("9.000 µs .. 30.000 µs"), "{text}");
        assert!(text.contains("≤ 12.000 µs ok"), "{text}");
        assert!(text.contains("2.00 MiB"), "{text}");
        table.rows.push(missed);
        assert!(!table.all_targets_met());
        assert!(table.to_string().contains("≤ 1.050 MISSED"));
        assert!(
            table
                .to_string()
                .lines()
                .all(|l| !l.contains("ms") && l == l.trim_end())
        );
        assert_eq!(figure(1.5, Unit::Millis), "1.500 ms");
    }
}
