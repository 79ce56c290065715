//! Run with `cargo run --example plot` (writes `docs/algorithms.svg`; give
//! another path as the first argument to write there instead).
//!
//! The same bursty traffic through every rate algorithm, on a scripted clock
//! (no sleeping): 4 requests per second, a burst of 4 where the algorithm
//! has one. Each algorithm gets two lanes: reject mode (a dot for each
//! admitted request, a cross for each refused one) and wait mode with a
//! longest wait of 1 s (a line from when a request arrived to when it
//! proceeds, a cross where it was refused). It also prints how many each
//! lane admitted.

use std::time::Duration;

use plotters::prelude::*;
use tower_ratelimit::algorithm::{State, decide};
use tower_ratelimit::{Algorithm, Policy, PolicySet, Quota};

/// Arrival times in µs: a burst, twice the rate, a burst across a window
/// edge, then traffic under the rate.
fn traffic() -> Vec<u64> {
    let ms = |n: u64| n * 1_000;
    let mut t = Vec::new();
    t.extend((0..10).map(|i| ms(i * 20))); // 10 in 200 ms
    t.extend((0..16).map(|i| ms(1_500 + i * 125))); // 8/s for 2 s
    t.extend((0..10).map(|i| ms(4_900 + i * 20))); // 10 around the 5 s edge
    t.extend((0..5).map(|i| ms(6_500 + i * 333))); // 3/s
    t
}

fn policy(algorithm: Algorithm) -> PolicySet {
    let quota = Quota::per_second(4);
    let windowed = matches!(
        algorithm,
        Algorithm::FixedWindow | Algorithm::SlidingWindowLog | Algorithm::SlidingWindowCounter
    );
    let quota = if windowed { quota } else { quota.burst(4) };
    PolicySet::new(vec![Policy::new("p", quota).with_algorithm(algorithm)]).expect("a valid policy")
}

/// One request's fate: when it arrived, and when it proceeded (if it did).
struct Fate {
    arrived: u64,
    proceeded: Option<u64>,
}

fn run(algorithm: Algorithm, max_wait: Option<Duration>) -> Vec<Fate> {
    let set = policy(algorithm);
    let mut states: Vec<Option<State>> = vec![None];
    traffic()
        .into_iter()
        .map(|at| {
            let d = decide(&set, &mut states, at, 1, max_wait);
            Fate {
                arrived: at,
                proceeded: d.is_allowed().then(|| at + d.wait().as_micros() as u64),
            }
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/docs/algorithms.svg").to_owned());
    let lanes: Vec<(String, Vec<Fate>, bool)> = Algorithm::RATES
        .iter()
        .flat_map(|&a| {
            [
                (a.as_str().to_owned(), run(a, None), false),
                (
                    format!("{} (wait ≤ 1 s)", a.as_str()),
                    run(a, Some(Duration::from_secs(1))),
                    true,
                ),
            ]
        })
        .collect();

    let n = lanes.len();
    let height = 80 + 34 * n as u32;
    let root = SVGBackend::new(&out, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "The same traffic through every algorithm: 4 per second, burst 4",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(250)
        .build_cartesian_2d(-0.2f64..9.2f64, -0.5f64..(n as f64 - 0.5))?;
    chart
        .configure_mesh()
        .y_labels(n)
        .y_label_formatter(&|y| {
            let i = y.round() as usize;
            lanes
                .get(n.wrapping_sub(1).wrapping_sub(i))
                .map_or(String::new(), |l| l.0.clone())
        })
        .x_desc("time (s); ● admitted, ✕ refused, ─● waited then proceeded")
        .x_labels(10)
        .light_line_style(WHITE)
        .disable_y_mesh()
        .draw()?;

    let secs = |us: u64| us as f64 / 1e6;
    for (i, (_, fates, waits)) in lanes.iter().enumerate() {
        let y = (n - 1 - i) as f64;
        // In wait lanes arrivals sit a little below the line, and a request
        // proceeds on it.
        let arrival = if *waits { y - 0.3 } else { y };
        if *waits {
            chart.draw_series(fates.iter().filter_map(|f| {
                let p = f.proceeded?;
                Some(PathElement::new(
                    vec![(secs(f.arrived), arrival), (secs(p), y)],
                    BLACK.mix(0.3),
                ))
            }))?;
            chart.draw_series(
                fates
                    .iter()
                    .filter_map(|f| Some(Circle::new((secs(f.proceeded?), y), 3, BLUE.filled()))),
            )?;
        } else {
            chart.draw_series(fates.iter().filter_map(|f| {
                f.proceeded
                    .map(|p| Circle::new((secs(p), y), 3, GREEN.filled()))
            }))?;
        }
        chart.draw_series(
            fates
                .iter()
                .filter(|f| f.proceeded.is_none())
                .map(|f| Cross::new((secs(f.arrived), arrival), 3, RED.stroke_width(1))),
        )?;
    }
    root.present()?;

    println!("{} requests; admitted per lane:", traffic().len());
    for (name, fates, _) in &lanes {
        let admitted = fates.iter().filter(|f| f.proceeded.is_some()).count();
        println!("  {name:<36} {admitted:>3}");
    }
    println!("wrote {out}");
    Ok(())
}
