//! Forward passes over many rows of different lengths, without padding: rows of similar length
//! run together, and at each call every active row advances by the shortest remaining length, so
//! each row's final state is its state after its own last step.

use crate::config::ModelConfig;
use crate::engine::Engine;
use crate::error::ModelError;
use crate::state::SlotStates;

/// Predictions of each row (`[len, output]`) and the final states of all rows (`[layers, rows,
/// hidden]`), starting from `init` (`[layers, rows, hidden]`, zero when `None`). Row `r` is
/// `rows[r]`, `[len, input]` values. At most `group` rows go into one engine call.
pub fn forward_rows(
    engine: &mut dyn Engine,
    cfg: &ModelConfig,
    params: &[f32],
    rows: &[&[f32]],
    init: Option<&SlotStates>,
    group: usize,
) -> Result<(Vec<Vec<f32>>, SlotStates), ModelError> {
    let (fi, fo) = (cfg.input, cfg.output);
    let n = rows.len();
    let mut states = match init {
        Some(s) => s.clone(),
        None => SlotStates::zeros(cfg.layers, n, cfg.hidden),
    };
    let lens: Vec<usize> = rows.iter().map(|r| r.len() / fi).collect();
    let mut preds: Vec<Vec<f32>> = lens.iter().map(|&l| Vec::with_capacity(l * fo)).collect();
    let mut order: Vec<usize> = (0..n).filter(|&r| lens[r] > 0).collect();
    order.sort_by_key(|&r| lens[r]);
    let mut x = Vec::new();
    for chunk in order.chunks(group.max(1)) {
        let mut active: Vec<usize> = chunk.to_vec();
        let mut pos = 0;
        while !active.is_empty() {
            let t = active.iter().map(|&r| lens[r] - pos).min().expect("active");
            x.clear();
            for &r in &active {
                x.extend_from_slice(&rows[r][pos * fi..(pos + t) * fi]);
            }
            let init = states.gather(&active);
            let (p, fin) = engine.forward(params, &x, active.len(), t, &init)?;
            for (i, &r) in active.iter().enumerate() {
                preds[r].extend_from_slice(&p[i * t * fo..(i + 1) * t * fo]);
            }
            states.scatter(&active, &fin);
            pos += t;
            active.retain(|&r| lens[r] > pos);
        }
    }
    Ok((preds, states))
}

/// Forecasts `horizon` steps of each row: warms its state over its history (`[len, input]`, at
/// least one step), then feeds each prediction back as the next input. Needs as many outputs as
/// inputs (the targets are the inputs). Returns `[horizon, output]` per row.
pub fn rollout(
    engine: &mut dyn Engine,
    cfg: &ModelConfig,
    params: &[f32],
    histories: &[&[f32]],
    horizon: usize,
    group: usize,
) -> Result<Vec<Vec<f32>>, ModelError> {
    if cfg.input != cfg.output {
        return Err(ModelError::Config {
            field: "target_columns".into(),
            msg: format!(
                "a forecast feeds each prediction back as the next input, so the targets must be the inputs; the model has {} inputs and {} outputs",
                cfg.input, cfg.output
            ),
        });
    }
    rollout_with(
        engine,
        cfg,
        params,
        histories,
        horizon,
        group,
        &mut |_, _, pred, out| out.extend_from_slice(pred),
    )
}

/// Builds the input of a roll-out step: `(row, k, prediction, out)` appends to `out` the
/// `[input]` values of the row's step `k` (1-based: the step after the `k`-th prediction) from
/// its `k`-th prediction `[output]`.
pub type NextInput<'a> = dyn FnMut(usize, usize, &[f32], &mut Vec<f32>) + 'a;

/// [`rollout`] with the inputs of each roll-out step built by `next` from the previous
/// prediction (covariates known ahead, a chosen quantile fed back, flags): warms each row's state
/// over its history, then runs `horizon - 1` more steps. Returns `[horizon, output]` per row.
pub fn rollout_with(
    engine: &mut dyn Engine,
    cfg: &ModelConfig,
    params: &[f32],
    histories: &[&[f32]],
    horizon: usize,
    group: usize,
    next: &mut NextInput<'_>,
) -> Result<Vec<Vec<f32>>, ModelError> {
    if let Some(r) = histories.iter().position(|h| h.len() < cfg.input) {
        return Err(ModelError::Data {
            source_name: "forecast".into(),
            msg: format!("row {r}: expected at least one step of history, got none"),
        });
    }
    let (fi, fo) = (cfg.input, cfg.output);
    let n = histories.len();
    if horizon == 0 {
        return Ok(vec![Vec::new(); n]);
    }
    let (preds, mut states) = forward_rows(engine, cfg, params, histories, None, group)?;
    let mut out: Vec<Vec<f32>> = preds
        .iter()
        .map(|p| {
            let mut v = Vec::with_capacity(horizon * fo);
            v.extend_from_slice(&p[p.len() - fo..]);
            v
        })
        .collect();
    let all: Vec<usize> = (0..n).collect();
    let mut x = Vec::new();
    for k in 1..horizon {
        for rows in all.chunks(group.max(1)) {
            x.clear();
            for &r in rows {
                let before = x.len();
                next(r, k, &out[r][(k - 1) * fo..k * fo], &mut x);
                if x.len() - before != fi {
                    return Err(ModelError::Shape {
                        what: format!("roll-out input of row {r} at step {k}"),
                        expected: format!("{fi} values"),
                        got: format!("{} values", x.len() - before),
                    });
                }
            }
            let init = states.gather(rows);
            let (p, fin) = engine.forward(params, &x, rows.len(), 1, &init)?;
            for (i, &r) in rows.iter().enumerate() {
                out[r].extend_from_slice(&p[i * fo..(i + 1) * fo]);
            }
            states.scatter(rows, &fin);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::CpuEngine;
    use crate::params::init_params;

    fn cfg() -> ModelConfig {
        ModelConfig {
            input: 2,
            output: 2,
            hidden: 5,
            dropout: 0.0,
            ..ModelConfig::seed()
        }
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed, "packed-test");
        (0..n).map(|_| r.range(-1.0, 1.0) as f32).collect()
    }

    #[test]
    fn ragged_rows_equal_each_row_run_alone() {
        let c = cfg();
        let p = init_params(&c, 3);
        let mut e = CpuEngine::new(&c, 1);
        let lens = [5usize, 1, 9, 0, 9, 3];
        let xs: Vec<Vec<f32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| values(l * 2, i as u64))
            .collect();
        let rows: Vec<&[f32]> = xs.iter().map(|v| v.as_slice()).collect();
        let (preds, fin) = forward_rows(&mut e, &c, &p, &rows, None, 4).unwrap();
        for (r, x) in xs.iter().enumerate() {
            let zero = SlotStates::zeros(c.layers, 1, c.hidden);
            if lens[r] == 0 {
                assert!(preds[r].is_empty());
                assert!(fin.gather(&[r]).h().iter().all(|&v| v == 0.0));
                continue;
            }
            let (p1, f1) = e.forward(&p, x, 1, lens[r], &zero).unwrap();
            let close = |a: &[f32], b: &[f32]| {
                a.len() == b.len() && a.iter().zip(b).all(|(u, v)| (u - v).abs() < 1e-6)
            };
            assert!(close(&preds[r], &p1), "row {r}");
            let g = fin.gather(&[r]);
            assert!(close(g.h(), f1.h()) && close(g.c(), f1.c()), "row {r}");
        }
    }

    #[test]
    fn a_forecast_equals_stepping_the_model_by_hand() {
        let c = cfg();
        let p = init_params(&c, 5);
        let mut e = CpuEngine::new(&c, 1);
        let hist = [values(7 * 2, 1), values(3 * 2, 2), values(2, 3)];
        let rows: Vec<&[f32]> = hist.iter().map(|v| v.as_slice()).collect();
        let got = rollout(&mut e, &c, &p, &rows, 4, 2).unwrap();
        for (r, h) in hist.iter().enumerate() {
            // by hand: one step at a time through the history, then feed predictions back
            let mut st = SlotStates::zeros(c.layers, 1, c.hidden);
            let mut last = Vec::new();
            for s in 0..h.len() / 2 {
                let (y, f) = e.forward(&p, &h[s * 2..s * 2 + 2], 1, 1, &st).unwrap();
                st = f;
                last = y;
            }
            let mut want = last.clone();
            for _ in 1..4 {
                let (y, f) = e.forward(&p, &last, 1, 1, &st).unwrap();
                st = f;
                want.extend_from_slice(&y);
                last = y;
            }
            assert_eq!(got[r].len(), 8);
            for (a, b) in got[r].iter().zip(&want) {
                assert!((a - b).abs() < 1e-6, "row {r}: {a} vs {b}");
            }
        }
        let mut c2 = c.clone();
        c2.output = 1;
        let e2 = rollout(&mut e, &c2, &p, &rows, 2, 2)
            .unwrap_err()
            .to_string();
        assert!(e2.contains("targets must be the inputs"), "{e2}");
    }
}
