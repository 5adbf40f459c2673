//! `ocean-liner plot DIR`: SVG charts of the load tool's JSON reports in a directory (what
//! `tools/compare.sh` writes under `bench-results/`).
//!
//! Each `NAME.json` is one run, labelled NAME. Charts:
//! - `throughput.svg`: operations per second of every run, one bar each;
//! - `latency-set.svg`, `latency-get.svg` (and `-mixed`): each run's latency
//!   distribution, latency (log scale) against the percentile on a scale of nines;
//! - `timeline-set.svg`, …: operations per second in each second of the measured window;
//! - `concurrency-set.svg`, …: operations per second against requests outstanding, one
//!   line per system, protocol and pipeline depth that was run at several (a sweep; the
//!   system is the part of NAME before its first dot).

use anyhow::{Context, bail};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// One run, as its JSON report gives it.
#[derive(Debug, Clone)]
pub struct Run {
    pub label: String,
    pub workload: String,
    pub protocol: String,
    pub pipeline: u64,
    pub concurrency: u64,
    /// Open loop: the offered operations per second (such a run's concurrency is a cap,
    /// not a point of the sweeps).
    pub rate: Option<f64>,
    pub ops_per_sec: f64,
    /// (quantile, µs)
    pub latency_cdf: Vec<(f64, u64)>,
    /// (second, operations in it)
    pub timeline: Vec<(u64, u64)>,
}

/// Reads one report (`ocean-liner bench --json`).
pub fn read_run(path: &Path) -> anyhow::Result<Run> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON report", path.display()))?;
    let label = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pairs = |key: &str| -> Vec<(f64, f64)> {
        v.get(key)
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Run {
        label,
        workload: v
            .get("workload")
            .and_then(|w| w.as_str())
            .unwrap_or("unknown")
            .to_string(),
        protocol: v
            .get("protocol")
            .and_then(|w| w.as_str())
            .unwrap_or("udp")
            .to_string(),
        pipeline: v.get("pipeline").and_then(|o| o.as_u64()).unwrap_or(1),
        concurrency: v.get("concurrency").and_then(|o| o.as_u64()).unwrap_or(1),
        rate: v.get("rate").and_then(|o| o.as_f64()),
        ops_per_sec: v.get("ops_per_sec").and_then(|o| o.as_f64()).unwrap_or(0.0),
        latency_cdf: pairs("latency_cdf")
            .into_iter()
            .map(|(q, us)| (q, us as u64))
            .collect(),
        timeline: pairs("timeline")
            .into_iter()
            .map(|(t, ops)| (t as u64, ops as u64))
            .collect(),
    })
}

/// Nines of a quantile: 0.9 → 1, 0.99 → 2; the maximum is drawn at [`NINES_MAX`].
fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        NINES_MAX
    } else {
        (-(1.0 - q).log10()).min(NINES_MAX)
    }
}

const NINES_MAX: f64 = 6.0;

fn percentile_label(n: &f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-n));
    match *n {
        n if n >= NINES_MAX => "max".into(),
        n if n < 0.5 => "0%".into(),
        _ => {
            let text = format!("{p:.4}");
            format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
        }
    }
}

type Fallible = Result<(), Box<dyn std::error::Error>>;

fn throughput_chart(runs: &[Run], path: &Path) -> Fallible {
    let height = 80 + 28 * runs.len() as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = runs.iter().map(|r| r.ops_per_sec).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption("Operations per second, by run", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(230)
        .build_cartesian_2d(0.0..max, 0.0..runs.len() as f64)?;
    let labels: Vec<String> = runs.iter().map(|r| r.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(runs.len() * 2 + 1)
        .y_label_formatter(&|y| {
            let at = *y - 0.5;
            if at >= 0.0 && at.fract().abs() < 1e-9 {
                labels
                    .get(runs.len() - 1 - at as usize)
                    .cloned()
                    .unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .draw()?;
    for (i, run) in runs.iter().enumerate() {
        let y = (runs.len() - 1 - i) as f64;
        let color = Palette99::pick(i).to_rgba();
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y + 0.15), (run.ops_per_sec, y + 0.85)],
            color.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{:.0}", run.ops_per_sec),
            (run.ops_per_sec + max * 0.01, y + 0.75),
            ("sans-serif", 13),
        )))?;
    }
    root.present()?;
    Ok(())
}

fn latency_chart(runs: &[&Run], title: &str, path: &Path) -> Fallible {
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_us = runs
        .iter()
        .flat_map(|r| r.latency_cdf.iter().map(|(_, us)| *us))
        .max()
        .unwrap_or(1)
        .max(2) as f64
        * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..NINES_MAX, (1.0..max_us).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(7)
        .x_label_formatter(&percentile_label)
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    draw_lines(&mut chart, runs, SeriesLabelPosition::UpperLeft, |run| {
        run.latency_cdf
            .iter()
            .map(|(q, us)| (nines(*q), (*us).max(1) as f64))
            .collect()
    })?;
    root.present()?;
    Ok(())
}

/// One line per run, in the palette's colours, with a legend at `legend`.
fn draw_lines<'a, Y: plotters::coord::ranged1d::Ranged<ValueType = f64>>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, Y>,
    >,
    runs: &[&Run],
    legend: SeriesLabelPosition,
    points: impl Fn(&Run) -> Vec<(f64, f64)>,
) -> Fallible {
    for (i, run) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points(run), color.stroke_width(2)))?
            .label(run.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn timeline_chart(runs: &[&Run], title: &str, path: &Path) -> Fallible {
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let t_max = runs
        .iter()
        .flat_map(|r| r.timeline.iter().map(|(t, _)| *t))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let t_min = runs
        .iter()
        .flat_map(|r| r.timeline.iter().map(|(t, _)| *t))
        .min()
        .unwrap_or(0) as f64;
    let ops_max = runs
        .iter()
        .flat_map(|r| r.timeline.iter().map(|(_, o)| *o))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(t_min..t_max, 0.0..ops_max)?;
    chart
        .configure_mesh()
        .x_desc("second of the run")
        .y_desc("operations per second")
        .y_label_formatter(&|y| format!("{:.0}k", y / 1000.0))
        .draw()?;
    draw_lines(&mut chart, runs, SeriesLabelPosition::LowerRight, |run| {
        run.timeline
            .iter()
            .map(|(t, ops)| (*t as f64, *ops as f64))
            .collect()
    })?;
    root.present()?;
    Ok(())
}

/// Runs of one system, protocol and pipeline depth at several concurrencies: (series
/// name, (concurrency, ops/s) by concurrency).
fn sweeps(runs: &[&Run]) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for run in runs.iter().filter(|r| r.rate.is_none()) {
        let system = run.label.split('.').next().unwrap_or_default();
        let name = if run.protocol == "udp" {
            format!("{system} udp")
        } else {
            format!("{system} {} p{}", run.protocol, run.pipeline)
        };
        let point = (run.concurrency as f64, run.ops_per_sec);
        match series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, points)) => points.push(point),
            None => series.push((name, vec![point])),
        }
    }
    series.retain(|(_, points)| points.len() > 1);
    for (_, points) in &mut series {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    series
}

fn concurrency_chart(series: &[(String, Vec<(f64, f64)>)], title: &str, path: &Path) -> Fallible {
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let points = || series.iter().flat_map(|(_, p)| p.iter());
    let c_max = points().map(|p| p.0).fold(2.0, f64::max) * 1.5;
    let c_min = points().map(|p| p.0).fold(f64::MAX, f64::min).max(1.0) / 1.5;
    let ops_max = points().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((c_min..c_max).log_scale(), 0.0..ops_max)?;
    chart
        .configure_mesh()
        .x_desc("requests outstanding")
        .y_desc("operations per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{:.0}k", y / 1000.0))
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Draws the charts of every report in `dir` into `dir`; returns the files written.
pub fn plot_dir(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let runs: Vec<Run> = paths
        .iter()
        .map(|p| read_run(p))
        .collect::<anyhow::Result<_>>()?;
    if runs.is_empty() {
        bail!(
            "{} holds no JSON report of `ocean-liner bench`",
            dir.display()
        );
    }
    let draw_err = |e: Box<dyn std::error::Error>| anyhow::anyhow!("drawing failed: {e}");
    let mut written = Vec::new();
    let path = dir.join("throughput.svg");
    throughput_chart(&runs, &path).map_err(draw_err)?;
    written.push(path);
    let mut workloads: Vec<&str> = runs.iter().map(|r| r.workload.as_str()).collect();
    workloads.sort_unstable();
    workloads.dedup();
    for w in workloads {
        let of: Vec<&Run> = runs.iter().filter(|r| r.workload == w).collect();
        if of.iter().any(|r| !r.latency_cdf.is_empty()) {
            let path = dir.join(format!("latency-{w}.svg"));
            latency_chart(&of, &format!("{w}: latency distribution"), &path).map_err(draw_err)?;
            written.push(path);
        }
        let sweep = sweeps(&of);
        if !sweep.is_empty() {
            let path = dir.join(format!("concurrency-{w}.svg"));
            concurrency_chart(
                &sweep,
                &format!("{w}: operations per second by requests outstanding"),
                &path,
            )
            .map_err(draw_err)?;
            written.push(path);
        }
        if of.iter().any(|r| !r.timeline.is_empty()) {
            let path = dir.join(format!("timeline-{w}.svg"));
            timeline_chart(
                &of,
                &format!("{w}: operations per second over the run"),
                &path,
            )
            .map_err(draw_err)?;
            written.push(path);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_read_as_nines() {
        assert_eq!(percentile_label(&0.0), "0%");
        assert_eq!(percentile_label(&1.0), "90%");
        assert_eq!(percentile_label(&3.0), "99.9%");
        assert_eq!(percentile_label(&6.0), "max");
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert_eq!(nines(1.0), NINES_MAX);
    }
}
