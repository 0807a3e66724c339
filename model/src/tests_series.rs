//! Series through the trainer: what every slot holds at every step, resets exactly at series
//! boundaries, states carried between a series' chunks, masked losses equal to a per-series loop.

use std::sync::Arc;

use crate::config::TrainSpec;
use crate::engine::Loss;
use crate::engine::cpu::CpuEngine;
use crate::trainer::Trainer;
use data::series::schedule::SlotWork;
use data::series::*;
use data::table::{Table, TimeKind};

/// A table of series with the given lengths; values differ per series, row and column.
fn table(lens: &[usize]) -> Table {
    let mut offsets = vec![0];
    let (mut times, mut values, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for (i, &n) in lens.iter().enumerate() {
        ids.push(format!("s{i}"));
        for r in 0..n {
            times.push(r as f64);
            let a = (i as f32 + 1.0) * 0.1;
            values.push((a * r as f32 * 0.7).sin() + a);
            values.push((a * r as f32 * 0.3).cos() * 2.0 - a);
        }
        offsets.push(offsets[i] + n);
    }
    Table {
        source: "test.csv".into(),
        ids,
        offsets,
        time_kind: TimeKind::Index,
        times,
        columns: vec!["a".into(), "b".into()],
        values,
    }
}

fn series_spec(val_steps: usize, timesteps: usize, scale: Scale) -> SeriesSpec {
    SeriesSpec {
        id_column: Some("id".into()),
        time_column: None,
        input_columns: vec!["a".into(), "b".into()],
        target_columns: vec!["a".into(), "b".into()],
        scale,
        val_steps,
        shuffle: true,
        timesteps,
        ..Default::default()
    }
}

fn train_spec(b: usize, s: &SeriesSpec) -> TrainSpec {
    let mut spec = TrainSpec {
        batch_size: b,
        epochs: 2,
        seed: 5,
        series: Some(s.clone()),
        ..TrainSpec::default()
    };
    spec.model.hidden = 4;
    spec.model.dropout = 0.0;
    spec
}

#[test]
fn steps_targets_and_scaling_follow_the_rows() {
    let t = table(&[6, 4]);
    let s = series_spec(1, 3, Scale::Series);
    let d = SeriesData::new(&t, &s, None).unwrap();
    assert_eq!(d.starts, [0, 5, 8]);
    assert_eq!(d.train_steps, [4, 2]);
    // statistics of series 0 come from its first 5 rows (training steps + 1)
    let col: Vec<f64> = (0..5).map(|r| f64::from(t.values[r * 2])).collect();
    let mean = col.iter().sum::<f64>() / 5.0;
    let sd = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 5.0).sqrt();
    let st = d.scaler.stat("s0", "a");
    assert!((st[0] - mean).abs() < 1e-12 && (st[1] - sd).abs() < 1e-12);
    // the target of step s is row s + 1, scaled
    let want = Scaler::apply(st, t.values[3 * 2]);
    assert_eq!(d.y_of(0)[2 * 2], want);
    assert_eq!(d.x_of(0)[3 * 2], want);
    // back in the user's units
    assert!((Scaler::invert(st, want) - f64::from(t.values[6])).abs() < 1e-5);
}

#[test]
fn a_series_too_short_is_named() {
    let t = table(&[6, 3]);
    let e = SeriesData::new(&t, &series_spec(2, 3, Scale::None), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test.csv") && e.contains("\"s1\"") && e.contains("3 rows") && e.contains("4"),
        "{e}"
    );
}

#[test]
fn resets_happen_exactly_at_series_boundaries_slot_by_slot() {
    let lens = [9, 3, 14, 5, 2, 7, 11];
    let t = table(&lens);
    let s = series_spec(0, 4, Scale::Global);
    let d = Arc::new(SeriesData::new(&t, &s, None).unwrap());
    let mut tr = Trainer::new(train_spec(3, &s), d.clone()).unwrap();
    let mut engine = CpuEngine::new(&tr.spec().model, 1);
    let mut seen = vec![0usize; lens.len()];
    while let Some(plan) = tr.plan() {
        let works = tr.slot_work(&plan).unwrap();
        let shard = tr.shard(&plan, 0..3);
        let valid = shard.valid.clone().unwrap();
        let resets = shard.resets.clone().unwrap();
        for (slot, w) in works.iter().enumerate() {
            match *w {
                SlotWork::Chunk { series, chunk } => {
                    assert_eq!(resets[slot], chunk == 0, "reset only at a series' start");
                    let left = d.train_steps[series] - chunk * 4;
                    assert_eq!(valid[slot] as usize, left.min(4));
                    let v = valid[slot] as usize;
                    assert_eq!(
                        &shard.x[slot * 4 * 2..(slot * 4 + v) * 2],
                        &d.x_of(series)[chunk * 4 * 2..(chunk * 4 + v) * 2],
                        "slot {slot} holds its series' chunk"
                    );
                    assert!(
                        shard.x[(slot * 4 + v) * 2..(slot + 1) * 4 * 2]
                            .iter()
                            .all(|&x| x == 0.0),
                        "padding"
                    );
                    seen[series] += v;
                }
                SlotWork::Idle => {
                    assert_eq!((valid[slot], resets[slot]), (0, false));
                }
            }
        }
        tr.step_local(&mut engine).unwrap();
        if tr.cursor().step == 0 {
            // an epoch covers every training step of every series exactly once
            assert_eq!(seen, d.train_steps, "epoch {}", plan.cursor.epoch);
            seen.iter_mut().for_each(|v| *v = 0);
        }
    }
    assert!(tr.is_done());
}

#[test]
fn masked_training_equals_running_each_series_alone() {
    // one epoch, no shuffle: the loss of every step equals the per-series loss of its chunks,
    // computed chunk by chunk for each series alone, carrying its own state
    let lens = [8, 3, 6, 5];
    let t = table(&lens);
    let mut s = series_spec(0, 3, Scale::None);
    s.shuffle = false;
    let d = Arc::new(SeriesData::new(&t, &s, None).unwrap());
    for loss in [crate::config::LossKind::Mse, crate::config::LossKind::Huber] {
        let mut spec = train_spec(2, &s);
        spec.epochs = 1;
        spec.loss = loss;
        spec.adam.lr = 1e-12; // the weights stay put (Adam moves each by at most lr)
        let mut tr = Trainer::new(spec.clone(), d.clone()).unwrap();
        let params = tr.params().to_vec();
        let mut engine = CpuEngine::new(&spec.model, 1);
        let mut total = 0.0f64;
        let mut outputs = 0usize;
        while let Some(plan) = tr.plan() {
            let n = tr.outputs_in(&plan);
            let c = tr.step_local(&mut engine).unwrap().unwrap();
            total += c.loss * n as f64;
            outputs += n;
        }
        // each series alone, whole, from zero, with the same loss
        let mut want = 0.0f64;
        for i in 0..lens.len() {
            let x = d.x_of(i);
            let steps = d.train_steps[i];
            let init = crate::state::SlotStates::zeros(spec.model.layers, 1, spec.model.hidden);
            use crate::engine::Engine;
            let (p, _) = engine.forward(&params, x, 1, steps, &init).unwrap();
            want += crate::trainer::loss_sum(spec.loss_fn(), 2, &p, d.y_of(i));
        }
        let count: usize = d.train_steps.iter().sum::<usize>() * 2;
        assert_eq!(outputs, count, "every valid output counted once");
        assert!(
            (total - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{loss:?}: {total} vs {want}"
        );
    }
}

#[test]
fn validation_continues_each_series_after_its_training_part() {
    let lens = [9, 12, 7];
    let t = table(&lens);
    let s = series_spec(3, 4, Scale::Series);
    let d = Arc::new(SeriesData::new(&t, &s, None).unwrap());
    let tr = Trainer::new(train_spec(2, &s), d.clone()).unwrap();
    let mut engine = CpuEngine::new(&tr.spec().model, 1);
    let got = tr.validate(&mut engine).unwrap().unwrap();
    // by hand: each series run whole from zero, the last 3 steps scored
    use crate::engine::Engine;
    let mut sum = 0.0;
    for (i, len) in lens.iter().enumerate() {
        let steps = len - 1;
        let init = crate::state::SlotStates::zeros(2, 1, 4);
        let (p, _) = engine
            .forward(tr.params(), d.x_of(i), 1, steps, &init)
            .unwrap();
        let a = (steps - 3) * 2;
        sum += crate::trainer::loss_sum(Loss::Mse, 2, &p[a..], &d.y_of(i)[a..]);
    }
    let want = sum / (3 * 3 * 2) as f64;
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
}

#[test]
fn the_learning_rate_schedule_reaches_the_update() {
    let t = table(&[9, 7, 8]);
    let s = series_spec(0, 4, Scale::Series);
    let d = Arc::new(SeriesData::new(&t, &s, None).unwrap());
    let moved = |warmup: u64| {
        let mut spec = train_spec(3, &s);
        spec.adam.lr = 0.01;
        spec.warmup_steps = warmup;
        let mut tr = Trainer::new(spec.clone(), d.clone()).unwrap();
        let p0 = tr.params().to_vec();
        let mut e = CpuEngine::new(&spec.model, 1);
        for _ in 0..3 {
            tr.step_local(&mut e).unwrap();
        }
        p0.iter()
            .zip(tr.params())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    };
    let (plain, warm) = (moved(0), moved(1000));
    // Adam moves a weight by about lr per step: 3 * 0.01 without warm-up, 6 * 1e-5 with it
    assert!(plain > 0.01, "{plain}");
    assert!(warm < 1e-4, "{warm}");
}

/// [`table`] with the cells `(row, column)` (rows counted over the whole table) missing.
fn with_gaps(mut t: Table, gaps: &[(usize, usize)]) -> Table {
    for &(r, c) in gaps {
        t.values[r * 2 + c] = f32::NAN;
    }
    t
}

#[test]
fn missing_inputs_are_carried_forward_and_flagged() {
    // series 0: rows 0..7; column a missing at rows 0 and 3-4, column b at row 5
    let t = with_gaps(table(&[7, 5]), &[(0, 0), (3, 0), (4, 0), (5, 1)]);
    let mut s = series_spec(0, 3, Scale::Series);
    s.fit_observed_flags(&t).unwrap();
    assert!(s.observed_flags, "an input cell is missing");
    let d = SeriesData::new(&t, &s, None).unwrap();
    assert_eq!(d.fi, 4, "two inputs and their flags");
    let st = |c: &str| d.scaler.stat("s0", c);
    // statistics leave the missing values out
    let obs: Vec<f64> = [1, 2, 5, 6]
        .iter()
        .map(|&r| f64::from(t.values[r * 2]))
        .collect();
    let mean = obs.iter().sum::<f64>() / 4.0;
    assert!((st("a")[0] - mean).abs() < 1e-9);
    let x = d.x_of(0);
    let a = |r: usize| Scaler::apply(st("a"), t.values[r * 2]);
    let b = |r: usize| Scaler::apply(st("b"), t.values[r * 2 + 1]);
    // step: [a, b, a observed, b observed]
    assert_eq!(
        &x[0..4],
        &[0.0, b(0), 0.0, 1.0],
        "zero before the first observation"
    );
    assert_eq!(&x[4..8], &[a(1), b(1), 1.0, 1.0]);
    assert_eq!(
        &x[12..16],
        &[a(2), b(3), 0.0, 1.0],
        "last observation carried forward"
    );
    assert_eq!(&x[16..20], &[a(2), b(4), 0.0, 1.0]);
    assert_eq!(&x[20..24], &[a(5), b(4), 1.0, 0.0]);
    // targets: row 3's a is missing, so step 2's first target is masked
    let o = d.observed_of(0).unwrap();
    assert_eq!(&o[4..6], &[false, true]);
    assert_eq!(d.y_of(0)[4], 0.0);
    assert_eq!(
        d.observed_in(0, 0..6),
        12 - 3,
        "three of twelve targets missing"
    );
    // --missing error: no flags even with gaps (the reader refuses them)
    let mut e = series_spec(0, 3, Scale::Series);
    e.missing = MissingPolicy::Error;
    e.fit_observed_flags(&t).unwrap();
    assert!(!e.observed_flags);
    // a complete table: no flags, no mask
    let mut c = series_spec(0, 3, Scale::Series);
    c.fit_observed_flags(&table(&[7, 5])).unwrap();
    assert!(!c.observed_flags);
    let d = SeriesData::new(&table(&[7, 5]), &c, None).unwrap();
    assert!(d.observed.is_none() && d.fi == 2);
}

#[test]
fn a_series_with_too_few_observed_targets_is_named() {
    // s1 (rows 6..10) has no observed value of column b among its training targets
    let t = with_gaps(table(&[6, 4]), &[(7, 1), (8, 1), (9, 1)]);
    let e = SeriesData::new(&t, &series_spec(0, 3, Scale::None), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"s1\"") && e.contains("\"b\"") && e.contains("no observed value"),
        "{e}"
    );
}

#[test]
fn missing_targets_add_nothing_and_the_divisor_counts_observed_outputs() {
    // one epoch, no shuffle, weights held still: every step's loss times its divisor sums to
    // the loss of each series alone over its observed targets only
    let lens = [8, 3, 6, 5];
    let t = with_gaps(
        table(&lens),
        &[(2, 0), (3, 1), (5, 0), (5, 1), (13, 1), (19, 0)],
    );
    let mut s = series_spec(0, 3, Scale::None);
    s.shuffle = false;
    s.fit_observed_flags(&t).unwrap();
    let d = Arc::new(SeriesData::new(&t, &s, None).unwrap());
    let mut spec = train_spec(2, &s);
    spec.epochs = 1;
    spec.adam.lr = 1e-12;
    spec.model.input = d.fi;
    let mut tr = Trainer::new(spec.clone(), d.clone()).unwrap();
    let params = tr.params().to_vec();
    let mut engine = CpuEngine::new(&spec.model, 1);
    let (mut total, mut outputs) = (0.0f64, 0usize);
    while let Some(plan) = tr.plan() {
        let n = tr.outputs_in(&plan);
        let shard = tr.shard(&plan, 0..2);
        let seen = shard
            .observed
            .as_ref()
            .expect("the mask travels with the shard");
        let valid = shard.valid.as_ref().unwrap();
        let counted: usize = (0..2)
            .map(|r| {
                seen[r * 3 * 2..(r * 3 + valid[r] as usize) * 2]
                    .iter()
                    .filter(|&&o| o)
                    .count()
            })
            .sum();
        assert_eq!(n, counted.max(1), "the divisor is the observed outputs");
        let c = tr.step_local(&mut engine).unwrap().unwrap();
        total += c.loss * n as f64;
        outputs += counted;
    }
    let mut want = 0.0f64;
    use crate::engine::Engine;
    for i in 0..lens.len() {
        let init = crate::state::SlotStates::zeros(spec.model.layers, 1, spec.model.hidden);
        let (p, _) = engine
            .forward(&params, d.x_of(i), 1, d.train_steps[i], &init)
            .unwrap();
        let o = d.observed_of(i).unwrap();
        for ((pv, yv), _) in p.iter().zip(d.y_of(i)).zip(o).filter(|(_, seen)| **seen) {
            want += f64::from(pv - yv).powi(2);
        }
    }
    let all: usize = d.train_steps.iter().sum::<usize>() * 2;
    assert_eq!(
        outputs,
        all - 6,
        "the six missing targets of the training steps"
    );
    assert!(
        (total - want).abs() <= 1e-5 * want.abs().max(1.0),
        "{total} vs {want}"
    );
}

#[test]
fn a_quantile_model_repeats_each_target_once_per_level() {
    let t = with_gaps(table(&[7, 5]), &[(3, 0)]);
    let mut s = series_spec(2, 3, Scale::Series);
    s.shuffle = false;
    let d = Arc::new(SeriesData::new(&t, &s, None).unwrap());
    let mut spec = train_spec(2, &s);
    spec.quantiles = vec![0.1, 0.5, 0.9];
    // two targets of three levels each
    let e = Trainer::new(spec.clone(), d.clone())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("6 target features") && e.contains("3 quantiles"),
        "{e}"
    );
    spec.model.output = 6;
    let mut tr = Trainer::new(spec.clone(), d.clone()).unwrap();
    let plan = tr.plan().unwrap();
    let shard = tr.shard(&plan, 0..2);
    // slot 0 holds s0's first chunk: steps 0..3, targets rows 1..4 (row 3's first one missing)
    let y0 = d.y_of(0);
    assert_eq!(&shard.y[..6], &[y0[0], y0[0], y0[0], y0[1], y0[1], y0[1]]);
    let seen = shard.observed.as_ref().unwrap();
    assert_eq!(&seen[12..18], &[false, false, false, true, true, true]);
    assert_eq!(
        tr.outputs_in(&plan),
        (3 * 2 - 1 + 2 * 2) * 3,
        "s0 misses one, s1 has 2 steps"
    );
    let mut engine = CpuEngine::new(&spec.model, 1);
    let c = tr.step_local(&mut engine).unwrap().unwrap();
    assert!(c.loss.is_finite() && c.loss > 0.0);
    assert!(tr.validate(&mut engine).unwrap().unwrap() > 0.0);
    assert!(matches!(tr.spec().loss_fn(), Loss::Pinball(q) if q.levels() == [0.1, 0.5, 0.9]));
}
