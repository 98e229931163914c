//! Aligned text tables: columns as wide as their widest cell, so that long versions and
//! reasons never push the other columns out of line.

/// How a column's cells sit in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

pub struct Table {
    header: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[(&str, Align)]) -> Table {
        Table {
            header: header.iter().map(|(h, a)| (h.to_string(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    /// A row; a cell with a line break is shown on one line (a reason quoting a log).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| crate::client::one_line(&c)).collect());
    }

    /// The table's lines, header first; the last column is not padded.
    pub fn lines(&self) -> Vec<String> {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.header.iter().map(|(h, _)| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(width(cell));
                }
            }
        }
        let render = |cells: Vec<&str>| {
            let last = cells.len().saturating_sub(1);
            let mut line = String::new();
            for (i, cell) in cells.into_iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(width(cell));
                let align = self.header.get(i).map(|(_, a)| *a).unwrap_or(Align::Left);
                match align {
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(cell);
                    }
                    Align::Left => {
                        line.push_str(cell);
                        if i != last {
                            line.push_str(&" ".repeat(pad));
                        }
                    }
                }
            }
            line
        };
        let mut lines = vec![render(self.header.iter().map(|(h, _)| h.as_str()).collect())];
        for row in &self.rows {
            lines.push(render(row.iter().map(String::as_str).collect()));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn columns_line_up_whatever_the_widths_and_line_breaks() {
        let mut t = Table::new(&[
            ("id", Align::Right),
            ("version", Align::Left),
            ("reason", Align::Left),
        ]);
        t.row(vec![
            "7".into(),
            "v2-with-a-long-name".into(),
            "first\nsecond".into(),
        ]);
        t.row(vec!["12".into(), "v3".into(), "ok".into()]);
        let lines = t.lines();
        assert_eq!(lines[0], "id  version              reason");
        assert_eq!(lines[1], " 7  v2-with-a-long-name  first ⏎ second");
        assert_eq!(lines[2], "12  v3                   ok");
    }
}
