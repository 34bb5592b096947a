//! `--report FILE.html` and `tether-bench render`: one self-contained HTML
//! page per run (or one comparing runs), its charts drawn as inline SVG.
//!
//! Self-contained on purpose: a capacity engineer mails the file, and the
//! reader may have no network; no script, font or stylesheet is fetched.
//! The charts are drawn here rather than by a JavaScript library for the
//! same reason, and because a page of SVG needs no browser engine to check:
//! every series is a `<path data-series="…">` (tests count its points), and
//! the numbers behind the page are embedded as JSON (`<script
//! id="series" type="application/json">`) for anyone who wants them.

use std::fmt::Write;

use serde_json::json;

use crate::report::{fmt_us, HistDump, Report};

/// Chart size in SVG user units (the page scales them to its width).
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 250.0;
/// Plot margins: left (axis labels), right, top, bottom (axis labels).
const MARGIN: (f64, f64, f64, f64) = (64.0, 34.0, 24.0, 34.0);
/// Ticks per axis (about: they are rounded to 1, 2 or 5 × 10^k).
const TICKS: usize = 5;
/// Series colours, in order; a comparison uses one per run.
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
/// The latency distribution is drawn up to this many nines (99.999 %).
const NINES: f64 = 5.0;

/// One line of a chart.
struct Series {
    /// Stable id (`data-series`), e.g. `delivered`, or `delivered:mosquitto`.
    id: String,
    /// Legend text.
    label: String,
    points: Vec<(f64, f64)>,
}

/// One chart: a title, an x and a y unit, its series; `nines`: x is a
/// percentile drawn as nines (-log10(1 - q)).
struct Chart {
    id: &'static str,
    title: String,
    x_unit: &'static str,
    y_unit: &'static str,
    series: Vec<Series>,
    nines: bool,
}

/// A chart's series before drawing: (name, points).
type Lines = Vec<(String, Vec<(f64, f64)>)>;

/// The series of one run, by chart id.
fn run_series(r: &Report) -> Vec<(&'static str, Lines)> {
    let tl = &r.timeline;
    let rate = |f: fn(&crate::report::TimePoint) -> u64| -> Vec<(f64, f64)> {
        tl.windows(2)
            .filter(|w| w[1].t > w[0].t)
            .map(|w| {
                (
                    w[1].t,
                    f(&w[1]).saturating_sub(f(&w[0])) as f64 / (w[1].t - w[0].t),
                )
            })
            .collect()
    };
    let mut messages = vec![
        ("sent".to_string(), rate(|p| p.published)),
        ("delivered".to_string(), rate(|p| p.received)),
        ("acked".to_string(), rate(|p| p.acked)),
    ];
    if r.offered_per_sec > 0.0 {
        let running: Vec<f64> = tl
            .iter()
            .filter(|p| p.phase == "running")
            .map(|p| p.t)
            .collect();
        if let (Some(a), Some(b)) = (running.first(), running.last()) {
            messages.insert(
                0,
                (
                    "offered".to_string(),
                    vec![(*a, r.offered_per_sec), (*b, r.offered_per_sec)],
                ),
            );
        }
    }
    let connections = vec![(
        "connections".to_string(),
        tl.iter().map(|p| (p.t, p.connected as f64)).collect(),
    )];
    let mut by_q: [Vec<(f64, f64)>; 3] = Default::default();
    for (sec, h) in &r.latency_by_sec {
        let h = h.histogram();
        if h.is_empty() {
            continue;
        }
        let t = f64::from(*sec) + 0.5;
        for (i, q) in [0.5, 0.99, 0.999].into_iter().enumerate() {
            by_q[i].push((t, h.value_at_quantile(q) as f64 / 1000.0));
        }
    }
    let [p50, p99, p999] = by_q;
    let latency = vec![
        ("p50".to_string(), p50),
        ("p99".to_string(), p99),
        ("p99.9".to_string(), p999),
    ];
    let mut distribution = vec![("latency".to_string(), nines_curve(&r.latency_hist))];
    if !r.ack_latency_hist.0.is_empty() {
        distribution.push(("ack latency".to_string(), nines_curve(&r.ack_latency_hist)));
    }
    let mut charts = vec![
        ("messages", messages),
        ("connections", connections),
        ("latency", latency),
        ("distribution", distribution),
    ];
    if tl.iter().any(|p| p.rss_bytes.is_some()) {
        charts.push((
            "rss",
            vec![(
                "broker RSS".to_string(),
                tl.iter()
                    .filter_map(|p| p.rss_bytes.map(|b| (p.t, b as f64 / (1 << 20) as f64)))
                    .collect(),
            )],
        ));
        charts.push((
            "cpu",
            vec![(
                "broker CPU".to_string(),
                tl.iter()
                    .filter_map(|p| p.cpu_percent.map(|c| (p.t, c)))
                    .collect(),
            )],
        ));
    }
    charts
}

/// A latency histogram as (nines, milliseconds): x = -log10(1 - q).
fn nines_curve(h: &HistDump) -> Vec<(f64, f64)> {
    let h = h.histogram();
    if h.is_empty() {
        return Vec::new();
    }
    (0..=(NINES * 10.0) as u32)
        .map(|k| {
            let x = f64::from(k) / 10.0;
            let q = 1.0 - 10f64.powf(-x);
            (x, h.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect()
}

fn chart_meta(id: &str) -> (&'static str, &'static str, &'static str, &'static str, bool) {
    match id {
        "messages" => ("messages", "Messages per second", "s", "msg/s", false),
        "connections" => ("connections", "Connections", "s", "connections", false),
        "latency" => ("latency", "End-to-end latency by second", "s", "ms", false),
        "distribution" => (
            "distribution",
            "Latency distribution",
            "percentile",
            "ms",
            true,
        ),
        "rss" => ("rss", "Broker RSS", "s", "MiB", false),
        _ => ("cpu", "Broker CPU", "s", "% of one core", false),
    }
}

/// The page for one run.
pub fn render_run(title: &str, r: &Report) -> String {
    let charts: Vec<Chart> = run_series(r)
        .into_iter()
        .map(|(id, series)| {
            let (id, t, x_unit, y_unit, nines) = chart_meta(id);
            Chart {
                id,
                title: t.to_string(),
                x_unit,
                y_unit,
                series: series
                    .into_iter()
                    .map(|(name, points)| Series {
                        id: name.clone(),
                        label: name,
                        points,
                    })
                    .collect(),
                nines,
            }
        })
        .collect();
    page(title, &[(title.to_string(), r)], &charts)
}

/// One page comparing runs (e.g. Tether and Mosquitto on one test): each
/// chart shows the same series of every run.
pub fn render_compare(title: &str, runs: &[(String, Report)]) -> String {
    let per_run: Vec<_> = runs.iter().map(|(_, r)| run_series(r)).collect();
    let mut charts: Vec<Chart> = Vec::new();
    // In comparisons, one line per run for the series that matter most.
    let picks: [(&str, &str); 6] = [
        ("messages", "delivered"),
        ("connections", "connections"),
        ("latency", "p99"),
        ("distribution", "latency"),
        ("rss", "broker RSS"),
        ("cpu", "broker CPU"),
    ];
    for (chart_id, series_name) in picks {
        let mut series = Vec::new();
        for ((label, _), charts) in runs.iter().zip(&per_run) {
            let found = charts
                .iter()
                .find(|(id, _)| *id == chart_id)
                .and_then(|(_, s)| s.iter().find(|(n, _)| n == series_name));
            if let Some((name, points)) = found {
                series.push(Series {
                    id: format!("{name}:{label}"),
                    label: format!("{label}: {name}"),
                    points: points.clone(),
                });
            }
        }
        if series.is_empty() {
            continue;
        }
        let (id, t, x_unit, y_unit, nines) = chart_meta(chart_id);
        charts.push(Chart {
            id,
            title: t.to_string(),
            x_unit,
            y_unit,
            series,
            nines,
        });
    }
    let refs: Vec<(String, &Report)> = runs.iter().map(|(l, r)| (l.clone(), r)).collect();
    page(title, &refs, &charts)
}

fn page(title: &str, runs: &[(String, &Report)], charts: &[Chart]) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{}</style></head><body>\n<h1>{}</h1>\n",
        esc(title),
        STYLE,
        esc(title)
    );
    for (label, r) in runs {
        summary(&mut h, label, r, runs.len() > 1);
    }
    for c in charts {
        svg_chart(&mut h, c);
    }
    let data = json!(charts
        .iter()
        .map(|c| (
            c.id,
            c.series
                .iter()
                .map(|s| (s.id.clone(), s.points.clone()))
                .collect::<std::collections::BTreeMap<_, _>>()
        ))
        .collect::<std::collections::BTreeMap<_, _>>());
    // `</` cannot appear in the JSON (no string holds it), so the script
    // element cannot be closed early.
    let _ = write!(
        h,
        "<script id=\"series\" type=\"application/json\">{}</script>\n</body></html>\n",
        data.to_string().replace("</", "<\\/")
    );
    h
}

/// The verdict, headline figures and settings of one run.
fn summary(h: &mut String, label: &str, r: &Report, show_label: bool) {
    let clean = r.violations.is_empty() && r.connect.failed == 0;
    let _ = write!(h, "<section class=\"run\">");
    if show_label {
        let _ = write!(h, "<h2>{}</h2>", esc(label));
    }
    let _ = write!(
        h,
        "<p class=\"verdict {}\">{}</p><ul>",
        if clean { "clean" } else { "dirty" },
        if clean {
            "CLEAN: every promise of the QoS kept, every connection made".to_string()
        } else {
            let mut why = r.violations.clone();
            if r.connect.failed > 0 {
                why.push(format!("{} connections failed", r.connect.failed));
            }
            esc(&format!("NOT CLEAN: {}", why.join("; ")))
        }
    );
    for n in &r.notes {
        let _ = write!(h, "<li>{}</li>", esc(n));
    }
    let mut facts = vec![
        format!("{} scenario against {}", r.scenario, r.broker),
        format!(
            "{} clients, {} connected; traffic {:.1} s",
            r.clients, r.connect.connected, r.traffic_secs
        ),
        format!(
            "published {:.0}/s, delivered {:.0}/s, acked {:.0}/s",
            r.published_per_sec, r.received_per_sec, r.acked_per_sec
        ),
        format!(
            "latency p50 {} p99 {} p99.9 {} max {}",
            fmt_us(r.latency_us.p50),
            fmt_us(r.latency_us.p99),
            fmt_us(r.latency_us.p999),
            fmt_us(r.latency_us.max)
        ),
    ];
    if let Some(t) = &r.target {
        facts.push(format!(
            "broker: CPU {:.1} %, RSS {:.1} → {:.1} MiB ({:.0} B per connection)",
            t.cpu_percent,
            t.rss_before_bytes as f64 / (1 << 20) as f64,
            t.rss_held_bytes as f64 / (1 << 20) as f64,
            t.rss_per_connection_bytes
        ));
    }
    for f in facts {
        let _ = write!(h, "<li>{}</li>", esc(&f));
    }
    let _ = write!(h, "</ul><details><summary>Settings</summary><table>");
    if let Some(obj) = r.settings.as_object() {
        for (k, v) in obj {
            if v.is_null() {
                continue;
            }
            let _ = write!(
                h,
                "<tr><th>{}</th><td>{}</td></tr>",
                esc(k),
                esc(&v.to_string())
            );
        }
    }
    let _ = writeln!(h, "</table></details></section>");
}

/// A 1, 2 or 5 × 10^k step giving about [`TICKS`] ticks over `span`.
fn nice_step(span: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / TICKS as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f < 1.5 {
        1.0
    } else if f < 3.5 {
        2.0
    } else if f < 7.5 {
        5.0
    } else {
        10.0
    }
}

fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The percentile a nines value stands for: 1 → 90 %, 2 → 99 %.
fn nines_label(x: f64) -> String {
    let q = 100.0 * (1.0 - 10f64.powf(-x));
    let digits = (x.ceil() as usize).saturating_sub(2);
    format!("{q:.digits$}%")
}

fn svg_chart(h: &mut String, c: &Chart) {
    let pts = c.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let ystep = nice_step(if y1 > 0.0 { y1 } else { 1.0 });
    let ymax = (y1 / ystep).ceil().max(1.0) * ystep;
    let (ml, mr, mt, mb) = MARGIN;
    let pw = WIDTH - ml - mr;
    let ph = HEIGHT - mt - mb;
    let sx = |x: f64| ml + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| mt + ph - y / ymax * ph;
    let _ = write!(
        h,
        "<figure id=\"chart-{}\"><figcaption>{}</figcaption>\
         <svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\">",
        c.id,
        esc(&c.title),
        esc(&c.title)
    );
    // Grid and y labels.
    let mut y = 0.0;
    while y <= ymax + ystep / 2.0 {
        let py = sy(y);
        let _ = write!(
            h,
            "<line class=\"grid\" x1=\"{ml}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\"/>\
             <text class=\"tick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            ml + pw,
            ml - 6.0,
            py + 4.0,
            fmt_tick(y)
        );
        y += ystep;
    }
    // X labels: whole nines on a distribution, round steps elsewhere.
    let mut xticks = Vec::new();
    if c.nines {
        let mut k = x0.ceil();
        while k <= x1 {
            xticks.push((k, nines_label(k)));
            k += 1.0;
        }
    } else {
        let xstep = nice_step(x1 - x0);
        let mut x = (x0 / xstep).ceil() * xstep;
        while x <= x1 {
            xticks.push((x, fmt_tick(x)));
            x += xstep;
        }
    }
    for (x, label) in xticks {
        let _ = write!(
            h,
            "<text class=\"tick\" x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            sx(x),
            mt + ph + 16.0,
            label
        );
    }
    let _ = write!(
        h,
        "<text class=\"unit\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
         <text class=\"unit\" x=\"4\" y=\"{}\">{}</text>",
        ml + pw,
        HEIGHT - 2.0,
        esc(c.x_unit),
        12.0,
        esc(c.y_unit)
    );
    for (i, s) in c.series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut d = String::new();
        for (j, &(x, y)) in s.points.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if j == 0 { "M" } else { " L" },
                sx(x),
                sy(y)
            );
        }
        let _ = write!(
            h,
            "<path data-series=\"{}\" data-points=\"{}\" d=\"{d}\" stroke=\"{colour}\"/>",
            esc(&s.id),
            s.points.len()
        );
    }
    let _ = write!(h, "</svg><div class=\"legend\">");
    for (i, s) in c.series.iter().enumerate() {
        let _ = write!(
            h,
            "<span><i style=\"background:{}\"></i>{}</span>",
            COLOURS[i % COLOURS.len()],
            esc(&s.label)
        );
    }
    let _ = writeln!(h, "</div></figure>");
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;max-width:820px;margin:24px auto;\
color:#222;padding:0 12px}h1{font-size:20px}h2{font-size:16px;margin:8px 0}\
.verdict{font-weight:600;padding:6px 10px;border-radius:4px}.clean{background:#e3f4e3}\
.dirty{background:#fbe3e3}figure{margin:18px 0}figcaption{font-weight:600}\
svg{width:100%;height:auto}path{fill:none;stroke-width:1.6}\
.grid{stroke:#e4e4e4}.tick,.unit{font-size:11px;fill:#555}\
.legend span{margin-right:14px;font-size:12px}.legend i{display:inline-block;width:12px;\
height:3px;margin-right:4px;vertical-align:middle}table{border-collapse:collapse;font-size:12px}\
th{text-align:left;padding-right:12px;font-weight:500;color:#555}";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{new_hist, TimePoint};

    fn sample_report() -> Report {
        let mut h = new_hist();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let mut r = Report {
            scenario: "p2p".into(),
            broker: "127.0.0.1:1883".into(),
            offered_per_sec: 100.0,
            latency_hist: HistDump::of(&h),
            ..Report::default()
        };
        for s in 0..5u32 {
            r.timeline.push(TimePoint {
                t: f64::from(s),
                phase: if s == 0 { "connecting" } else { "running" }.into(),
                connected: 10,
                published: u64::from(s) * 100,
                acked: u64::from(s) * 100,
                received: u64::from(s) * 100,
                rss_bytes: Some(10 << 20),
                cpu_percent: Some(12.5),
            });
            r.latency_by_sec.insert(s, HistDump::of(&h));
        }
        r
    }

    #[test]
    fn a_run_page_carries_every_series() {
        let page = render_run("p2p <test>", &sample_report());
        for id in [
            "offered",
            "sent",
            "delivered",
            "acked",
            "connections",
            "p50",
            "p99",
            "p99.9",
            "latency",
            "broker RSS",
            "broker CPU",
        ] {
            assert!(
                page.contains(&format!("data-series=\"{id}\"")),
                "series {id} missing"
            );
        }
        assert!(page.contains("p2p &lt;test&gt;"), "the title is escaped");
        assert!(page.contains("CLEAN"));
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "nothing fetched"
        );
    }

    #[test]
    fn a_comparison_draws_each_run_on_one_chart() {
        let runs = vec![
            ("tether".to_string(), sample_report()),
            ("mosquitto".to_string(), sample_report()),
        ];
        let page = render_compare("p2p", &runs);
        assert!(page.contains("data-series=\"delivered:tether\""));
        assert!(page.contains("data-series=\"delivered:mosquitto\""));
        assert!(page.contains("data-series=\"latency:mosquitto\""));
    }

    #[test]
    fn ticks_are_round_and_nines_read_as_percentiles() {
        assert_eq!(nice_step(100.0), 20.0);
        assert_eq!(nice_step(7.0), 1.0);
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(3.0), "99.9%");
    }
}
