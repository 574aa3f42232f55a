//! Usage charts as inline SVG (no scripts, no external assets): requests per day with the
//! errors among them, and the same numbers as a table for screen readers and copying.

use std::collections::BTreeMap;
use std::fmt::Write;

use gatehouse_store::usage::{date_of, UsageRow};

use crate::html::esc;

/// One day's totals over every route and plan.
#[derive(Default, Clone, Copy)]
struct Day {
    requests: u64,
    errors: u64,
    latency_ms_sum: u64,
    buckets: [u64; 6],
}

/// The latency under which `share` percent of `total` requests were answered, from the
/// usage buckets: their upper bounds, an estimate that never understates.
pub(crate) fn percentile(buckets: &[u64; 6], total: u64, share: u64) -> &'static str {
    const LABELS: [&str; 6] = [
        "≤ 10 ms",
        "≤ 50 ms",
        "≤ 100 ms",
        "≤ 250 ms",
        "≤ 1 s",
        "> 1 s",
    ];
    if total == 0 {
        return "–";
    }
    let needed = (total * share).div_ceil(100);
    let mut seen = 0;
    for (count, label) in buckets.iter().zip(LABELS) {
        seen += count;
        if seen >= needed {
            return label;
        }
    }
    LABELS[5]
}

/// Requests per day from `from` to `to` (day numbers), sandbox traffic included or not.
pub(crate) fn usage_chart(rows: &[UsageRow], from: i64, to: i64, sandbox: bool) -> String {
    let mut days: BTreeMap<i64, Day> = (from..=to).map(|d| (d, Day::default())).collect();
    for row in rows.iter().filter(|r| r.sandbox == sandbox) {
        let Some(day) = days.get_mut(&row.day) else {
            continue;
        };
        day.requests += row.requests;
        day.errors += row.client_errors + row.server_errors;
        day.latency_ms_sum += row.latency_ms_sum;
        for (mine, theirs) in day.buckets.iter_mut().zip(row.latency_buckets) {
            *mine += theirs;
        }
    }
    let total: u64 = days.values().map(|d| d.requests).sum();
    let errors: u64 = days.values().map(|d| d.errors).sum();
    let peak = days.values().map(|d| d.requests).max().unwrap_or(0).max(1);
    let (width, height, left, bottom) = (720.0_f64, 200.0_f64, 40.0_f64, 24.0_f64);
    let slot = (width - left) / days.len().max(1) as f64;
    let scale = (height - bottom - 10.0) / peak as f64;
    let mut bars = String::new();
    for (index, (day, totals)) in days.iter().enumerate() {
        let x = left + index as f64 * slot + slot * 0.15;
        let w = slot * 0.7;
        let h = totals.requests as f64 * scale;
        let e = totals.errors as f64 * scale;
        let base = height - bottom;
        let average = totals
            .latency_ms_sum
            .checked_div(totals.requests)
            .map(|ms| format!(", average {ms} ms"))
            .unwrap_or_default();
        let _ = write!(
            bars,
            r##"<g><title>{date}: {requests} requests, {errors} errors{average}</title><rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="#1f5fbf"></rect><rect x="{x:.1}" y="{ey:.1}" width="{w:.1}" height="{e:.1}" fill="#a8241a"></rect></g>"##,
            date = date_of(*day),
            requests = totals.requests,
            errors = totals.errors,
            y = base - h,
            ey = base - e,
        );
        let last = index + 1 == days.len();
        if (index % 7 == 0 && index + 4 < days.len()) || last {
            // The last label ends at the right edge instead of running past it.
            let (label_x, anchor) = if last { (width, "end") } else { (x, "start") };
            let _ = write!(
                bars,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"#,
                label_x,
                height - 6.0,
                &date_of(*day)[5..]
            );
        }
    }
    let mut table = String::new();
    for (day, totals) in days.iter().filter(|(_, t)| t.requests > 0) {
        let _ = write!(
            table,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} ms</td><td>{}</td></tr>",
            date_of(*day),
            totals.requests,
            totals.errors,
            totals.latency_ms_sum / totals.requests.max(1),
            esc(percentile(&totals.buckets, totals.requests, 95)),
        );
    }
    if table.is_empty() {
        table.push_str(r#"<tr><td colspan="5" class="muted">No requests yet.</td></tr>"#);
    }
    let label = format!(
        "{} from {} to {}: {total} requests, {errors} errors",
        if sandbox {
            "Sandbox requests"
        } else {
            "Requests"
        },
        date_of(from),
        date_of(to)
    );
    format!(
        r##"<figure class="card" data-requests="{total}" data-errors="{errors}"><svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{label}"><line x1="{left}" y1="{base}" x2="{width}" y2="{base}" stroke="#98a2b3"></line><text x="0" y="16">{peak}</text><text x="0" y="{base}">0</text>{bars}</svg><figcaption>{label} <span class="muted">(blue: requests, red: errors)</span></figcaption><details><summary>As a table</summary><div class="table"><table><thead><tr><th scope="col">Day</th><th scope="col">Requests</th><th scope="col">Errors</th><th scope="col">Average latency</th><th scope="col">95 % within</th></tr></thead><tbody>{table}</tbody></table></div></details></figure>"##,
        label = esc(&label),
        base = height - bottom,
    )
}

/// Requests per second over the live window, errors in red.
pub(crate) fn per_second_chart(
    seconds: &[(i64, gatehouse_telemetry::usage::UsageCounts)],
) -> String {
    let total: u64 = seconds.iter().map(|(_, c)| c.requests).sum();
    let errors: u64 = seconds
        .iter()
        .map(|(_, c)| c.client_errors + c.server_errors)
        .sum();
    let peak = seconds
        .iter()
        .map(|(_, c)| c.requests)
        .max()
        .unwrap_or(0)
        .max(1);
    let (width, height, left, bottom) = (720.0_f64, 140.0_f64, 40.0_f64, 20.0_f64);
    let slot = (width - left) / seconds.len().max(1) as f64;
    let scale = (height - bottom - 10.0) / peak as f64;
    let base = height - bottom;
    let mut bars = String::new();
    for (index, (_, counts)) in seconds.iter().enumerate() {
        let x = left + index as f64 * slot;
        let h = counts.requests as f64 * scale;
        let e = (counts.client_errors + counts.server_errors) as f64 * scale;
        let ago = seconds.len() - 1 - index;
        let _ = write!(
            bars,
            r##"<g><title>{ago} s ago: {} requests</title><rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#1f5fbf"></rect><rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{e:.1}" fill="#a8241a"></rect></g>"##,
            counts.requests,
            base - h,
            slot * 0.8,
            base - e,
            slot * 0.8,
        );
    }
    let label = format!(
        "The last {} seconds: {total} requests ({:.2} per second), {errors} errors",
        seconds.len(),
        total as f64 / seconds.len().max(1) as f64
    );
    format!(
        r##"<figure class="card" id="live" data-requests="{total}"><svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{label}"><line x1="{left}" y1="{base}" x2="{width}" y2="{base}" stroke="#98a2b3"></line><text x="0" y="16">{peak}/s</text><text x="0" y="{base}">0</text><text x="{left}" y="{ty}">{n} s ago</text><text x="{now_x}" y="{ty}">now</text>{bars}</svg><figcaption>{label}</figcaption></figure>"##,
        label = esc(&label),
        n = seconds.len(),
        ty = height - 4.0,
        now_x = width - 30.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_summed_and_labelled() {
        let row = |day, requests, errors, sandbox| UsageRow {
            day,
            requests,
            server_errors: errors,
            latency_ms_sum: requests * 4,
            latency_buckets: [requests, 0, 0, 0, 0, 0],
            sandbox,
            ..UsageRow::default()
        };
        let rows = [
            row(100, 8, 1, false),
            row(100, 2, 0, false),
            row(101, 5, 0, true),
        ];
        let chart = usage_chart(&rows, 95, 101, false);
        assert!(chart.contains(r#"data-requests="10""#), "{chart}");
        assert!(chart.contains("10 requests, 1 errors, average 4 ms"));
        assert!(chart.contains("<td>≤ 10 ms</td>"));
        let sandbox = usage_chart(&rows, 95, 101, true);
        assert!(sandbox.contains(r#"data-requests="5""#));
        assert_eq!(percentile(&[90, 4, 1, 0, 0, 5], 100, 95), "≤ 100 ms");
        assert_eq!(percentile(&[90, 4, 0, 0, 0, 6], 100, 95), "> 1 s");
        assert_eq!(percentile(&[90, 5, 0, 0, 0, 5], 100, 95), "≤ 50 ms");
    }
}
