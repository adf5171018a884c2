//! The table of checks: each one is reported as it is made (PASS or FAIL), and the test fails
//! at the end if any failed, so one run shows every problem at once.

use crate::harness::report;

#[derive(Default)]
pub struct Checks {
    rows: Vec<Row>,
}

struct Row {
    ok: bool,
    what: String,
    detail: String,
}

impl Row {
    fn line(&self) -> String {
        let verdict = if self.ok { "PASS" } else { "FAIL" };
        format!("[{verdict}] {}: {}", self.what, self.detail)
    }
}

impl Checks {
    /// Records and reports one check; returns `ok`.
    pub fn check(&mut self, ok: bool, what: impl Into<String>, detail: impl Into<String>) -> bool {
        let row = Row {
            ok,
            what: what.into(),
            detail: detail.into(),
        };
        report(&row.line());
        self.rows.push(row);
        ok
    }

    /// Every check, one line each, and the totals.
    pub fn summary(&self) -> String {
        let mut s = String::from("\n=== kamailio_interop checks ===\n");
        for row in &self.rows {
            s.push_str(&row.line());
            s.push('\n');
        }
        let failed = self.failed().len();
        s.push_str(&format!(
            "{} passed, {failed} failed\n",
            self.rows.len() - failed
        ));
        s
    }

    /// `what: detail` of every failed check.
    pub fn failed(&self) -> Vec<String> {
        self.rows
            .iter()
            .filter(|r| !r.ok)
            .map(|r| format!("{}: {}", r.what, r.detail))
            .collect()
    }
}
