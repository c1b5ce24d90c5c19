//! What every report shares: tables for the terminal, Markdown and HTML, escaping, the
//! self-contained page around a report, and the date and machine lines.

use std::fmt::Write as _;

/// A self-contained HTML page around `body`.
pub(crate) fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 64rem; margin: 2rem auto; color: #222; }}
svg {{ max-width: 100%; height: auto; }}
svg text {{ font-size: 12px; fill: #222; }}
pre {{ background: #f6f6f6; padding: 1rem; overflow-x: auto; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-variant-numeric: tabular-nums; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.25rem 0.75rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
figure {{ margin: 1rem 0; }}
</style></head><body>
{body}</body></html>
"#,
        title = escape(title),
    )
}

pub(crate) fn table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut line = String::from("  ");
        for (cell, width) in cells.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        line.trim_end().to_owned() + "\n"
    };
    let mut text = line(headers.to_vec());
    let rules: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
    text.push_str(&line(rules.iter().map(String::as_str).collect()));
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

pub(crate) fn markdown_table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) -> String {
    let mut text = format!("| {} |\n|", headers.join(" | "));
    text.push_str(&"---|".repeat(N));
    text.push('\n');
    for row in rows {
        let _ = writeln!(text, "| {} |", row.join(" | "));
    }
    text
}

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An HTML table; cells are escaped.
pub(crate) fn html_table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) -> String {
    let mut html = String::from("<table><thead><tr>");
    for header in headers {
        let _ = write!(html, "<th>{}</th>", escape(header));
    }
    html.push_str("</tr></thead><tbody>");
    for row in rows {
        html.push_str("<tr>");
        for cell in row {
            let _ = write!(html, "<td>{}</td>", escape(cell));
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table>");
    html
}

/// The current time as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or_default(),
    )
}

/// The hardware line of a report: cores, OS, architecture, and the CPU model when known.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        });
    let mut line = format!(
        "{} cores, {} {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    if let Some(model) = model {
        line.push_str(&format!(", {model}"));
    }
    line
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time, without a date library.
pub fn rfc3339(unix_seconds: u64) -> String {
    let days = unix_seconds / 86_400;
    let seconds = unix_seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3_600,
        seconds % 3_600 / 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rendered_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn html_tables_escape_their_cells() {
        let html = html_table(&["mode", "p50"], &[["a<b".to_owned(), "1".to_owned()]]);
        assert!(html.contains("<th>mode</th><th>p50</th>"), "{html}");
        assert!(html.contains("<td>a&lt;b</td><td>1</td>"), "{html}");
    }
}
