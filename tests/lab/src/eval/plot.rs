//! The eval's plot: per chain, the declared percentile and the goodput of
//! each chain-window over trace time, one line per arm (first run), the
//! objective dashed, fault periods shaded.

use super::verdict::Objective;
use super::ArmRun;
use plotters::prelude::*;
use std::path::Path;

fn colour(i: usize) -> RGBColor {
    const C: [RGBColor; 4] = [
        RGBColor(200, 60, 50),
        RGBColor(230, 150, 30),
        RGBColor(40, 110, 190),
        RGBColor(60, 160, 90),
    ];
    C[i % C.len()]
}

/// Writes the SVG; `fault_periods` in trace minutes.
pub fn write_svg(
    path: &Path,
    runs: &[ArmRun],
    objectives: &[Objective],
    fault_periods: &[(f64, f64)],
) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("plotting {}: {e}", path.display());
    let root =
        SVGBackend::new(path, (1100, 380 * objectives.len().max(1) as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let rows = root.split_evenly((objectives.len().max(1), 2));
    let first_runs: Vec<&ArmRun> = runs.iter().filter(|r| r.run == 0).collect();
    let x_max = runs
        .iter()
        .flat_map(|r| r.windows.iter().map(|w| w.last as f64 + 1.0))
        .fold(1.0, f64::max);
    for (ci, o) in objectives.iter().enumerate() {
        let p_max = first_runs
            .iter()
            .flat_map(|r| r.windows.iter().filter(|w| w.chain == o.chain))
            .map(|w| w.percentile_ms)
            .fold(o.slo_ms * 1.5, f64::max);
        for (panel, area) in rows[ci * 2..ci * 2 + 2].iter().enumerate() {
            let (title, y_max) = if panel == 0 {
                (
                    format!("{}: p{} ms per window", o.chain, o.percentile),
                    p_max * 1.05,
                )
            } else {
                (
                    format!("{}: goodput (answered within {} ms)", o.chain, o.slo_ms),
                    1.02,
                )
            };
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..x_max, 0f64..y_max)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("trace minute")
                .draw()
                .map_err(|e| err(&e))?;
            for (a, b) in fault_periods {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(*a, 0.0), (*b, y_max)],
                        RGBColor(120, 120, 120).mix(0.15).filled(),
                    )))
                    .map_err(|e| err(&e))?;
            }
            if panel == 0 {
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(0.0, o.slo_ms), (x_max, o.slo_ms)],
                        6,
                        4,
                        BLACK.stroke_width(1),
                    ))
                    .map_err(|e| err(&e))?
                    .label("objective")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
            }
            for r in &first_runs {
                let points: Vec<(f64, f64)> = r
                    .windows
                    .iter()
                    .filter(|w| w.chain == o.chain)
                    .map(|w| {
                        let x = (w.first as f64 + w.last as f64 + 1.0) / 2.0;
                        let y = if panel == 0 {
                            w.percentile_ms
                        } else {
                            w.good as f64 / w.requests.max(1) as f64
                        };
                        (x, y)
                    })
                    .collect();
                let c = colour(r.arm as usize);
                chart
                    .draw_series(LineSeries::new(points, c.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(r.arm.name())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
