//! What the model sees at each step of a series: the columns of the step's row, covariates known
//! ahead from the next row, calendar features of the next row's time, and whether each column
//! was observed; missing cells are filled.
//!
//! # The input layout
//! Step `s` of a series predicts the targets of row `s + 1` from, in this order:
//! 1. the input columns (`--input-columns`) of row `s`;
//! 2. the past covariates (`--past-covariates`) of row `s`: known up to now;
//! 3. the future covariates (`--future-covariates`) of row `s + 1`: known ahead, so the model
//!    sees the value at the time it predicts (a price or a holiday of that day);
//! 4. two features per calendar feature (`--calendar`), `sin` and `cos` of the position of row
//!    `s + 1`'s time in its cycle (see [`Calendar`]);
//! 5. with observed flags ([`super::SeriesSpec::observed_flags`]), one input per column of 1-3,
//!    in the same order: 1 where the cell was observed, 0 where it was missing and filled.
//!
//! All values are scaled ([`super::Scaler`]). A missing cell is filled with the last observed
//! value of its column in the series (last observation carried forward), or with 0 in scaled
//! units (the column's mean under `--scale series` or `global`) before the first observation.

use serde::{Deserialize, Serialize};

use super::{Scaler, SeriesSpec, Stat, column_indices};
use crate::error::DataError;
use crate::table::{Table, TimeKind};

/// A calendar feature of the time column, each encoded as the `sin` and `cos` of its position in
/// its cycle (so December is next to January, Sunday next to Monday).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Calendar {
    /// Day of the week, Monday to Sunday (cycle of 7 days).
    Dow,
    /// Day of the month, 1 to 31 (cycle of 31).
    Dom,
    /// Day of the year, 1 to 366 (cycle of 365.25).
    Doy,
    /// Month of the year (cycle of 12).
    Month,
    /// Hour of the day with its minutes (cycle of 24 hours); needs date-times.
    Hour,
}

impl std::fmt::Display for Calendar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Calendar {
    /// The feature's name, as the flag spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dow => "dow",
            Self::Dom => "dom",
            Self::Doy => "doy",
            Self::Month => "month",
            Self::Hour => "hour",
        }
    }

    /// `(position, cycle)` of the time `t` (seconds since the Unix epoch, UTC).
    fn phase(self, t: f64) -> (f64, f64) {
        let days = (t / 86_400.0).floor();
        let (y, m, d) = crate::table::civil_from_days(days as i64);
        match self {
            // 1970-01-01 was a Thursday: Monday is 0
            Self::Dow => ((days + 3.0).rem_euclid(7.0), 7.0),
            Self::Dom => (f64::from(d - 1), 31.0),
            Self::Doy => {
                let jan1 = crate::table::days_from_civil(y, 1, 1) as f64;
                (days - jan1, 365.25)
            }
            Self::Month => (f64::from(m - 1), 12.0),
            Self::Hour => ((t - days * 86_400.0) / 3600.0, 24.0),
        }
    }

    /// `sin` and `cos` of the feature at time `t`.
    pub fn encode(self, t: f64) -> [f32; 2] {
        let (v, cycle) = self.phase(t);
        let a = std::f64::consts::TAU * v / cycle;
        [a.sin() as f32, a.cos() as f32]
    }
}

/// How many inputs of each part a step has (the layout of the module docs), from a spec alone:
/// what a server needs to build a roll-out step from the values a request gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLayout {
    /// Input columns (the first inputs; a forecast feeds the targets back into them).
    pub inputs: usize,
    /// Past covariates.
    pub past: usize,
    /// Future covariates.
    pub future: usize,
    /// Calendar features (two inputs each).
    pub calendar: usize,
    /// One observed flag per column of the first three parts.
    pub flags: bool,
}

impl InputLayout {
    /// The layout of `spec`'s steps.
    pub fn of(spec: &SeriesSpec) -> Self {
        Self {
            inputs: spec.input_columns.len(),
            past: spec.past_covariates.len(),
            future: spec.future_covariates.len(),
            calendar: spec.calendar.len(),
            flags: spec.observed_flags,
        }
    }

    /// Inputs per step.
    pub fn width(&self) -> usize {
        let cols = self.inputs + self.past + self.future;
        cols + 2 * self.calendar + if self.flags { cols } else { 0 }
    }

    /// Inputs known ahead of a step: the future covariates, then the `sin` and `cos` of each
    /// calendar feature.
    pub fn ahead(&self) -> usize {
        self.future + 2 * self.calendar
    }

    /// Appends the inputs of a roll-out step: `fed` the values fed back into the input columns,
    /// the past covariates held at their values in `last` (the series' last input row, which
    /// they are unknown after: flagged as not observed), and `ahead` ([`InputLayout::ahead`]
    /// values).
    pub fn roll_out_step(&self, fed: &[f32], last: &[f32], ahead: &[f32], out: &mut Vec<f32>) {
        debug_assert_eq!(fed.len(), self.inputs);
        debug_assert_eq!(ahead.len(), self.ahead());
        out.extend_from_slice(fed);
        out.extend_from_slice(&last[self.inputs..self.inputs + self.past]);
        out.extend_from_slice(ahead);
        if self.flags {
            out.extend(std::iter::repeat_n(1.0, self.inputs));
            out.extend(std::iter::repeat_n(0.0, self.past));
            out.extend(std::iter::repeat_n(1.0, self.future));
        }
    }
}

/// Which columns of a table make a step's inputs, and how (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Table columns of the step's row: inputs, then past covariates.
    now: Vec<usize>,
    /// Table columns of the next row: future covariates.
    next: Vec<usize>,
    /// Calendar features of the next row's time.
    calendar: Vec<Calendar>,
    /// One observed flag per column of `now` and `next`.
    flags: bool,
}

/// The last observed scaled value of each column of a series (`NaN` before the first), for the
/// fill of missing cells; one per series, carried along its steps in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Fill {
    now: Vec<f32>,
    next: Vec<f32>,
}

impl Features {
    /// The features `spec` asks of `table`; calendar features need a date or date-time column,
    /// and `hour` a date-time column.
    pub fn new(table: &Table, spec: &SeriesSpec) -> Result<Self, DataError> {
        let mut now = column_indices(table, &spec.input_columns)?;
        now.extend(column_indices(table, &spec.past_covariates)?);
        let next = column_indices(table, &spec.future_covariates)?;
        for c in &spec.calendar {
            let ok = match table.time_kind {
                TimeKind::DateTime => true,
                TimeKind::Date => *c != Calendar::Hour,
                TimeKind::Index | TimeKind::Number => false,
            };
            if !ok {
                let col = spec.time_column.as_deref().unwrap_or_default();
                let msg = match table.time_kind {
                    TimeKind::Index => format!(
                        "--calendar {c} needs a time column of dates or date-times (--time-column); the table is read without one"
                    ),
                    TimeKind::Number => format!(
                        "--calendar {c} needs dates or date-times in the time column; column {col:?} holds numbers"
                    ),
                    _ => format!(
                        "--calendar {c} needs date-times in the time column; column {col:?} holds dates without a time of day"
                    ),
                };
                return Err(DataError::Invalid {
                    source_name: table.source.clone(),
                    msg,
                });
            }
        }
        Ok(Self {
            now,
            next,
            calendar: spec.calendar.clone(),
            flags: spec.observed_flags,
        })
    }

    /// Inputs per step.
    pub fn width(&self) -> usize {
        let cols = self.now.len() + self.next.len();
        cols + 2 * self.calendar.len() + if self.flags { cols } else { 0 }
    }

    /// Table columns of the step's row (inputs, past covariates).
    pub fn now_columns(&self) -> &[usize] {
        &self.now
    }

    /// Table columns of the next row (future covariates).
    pub fn next_columns(&self) -> &[usize] {
        &self.next
    }

    /// A fill state for a series' first step.
    pub fn fill(&self) -> Fill {
        Fill {
            now: vec![f32::NAN; self.now.len()],
            next: vec![f32::NAN; self.next.len()],
        }
    }

    /// Appends the inputs of one step: `now` the scaled values of [`Features::now_columns`] in
    /// the step's row and `next` those of [`Features::next_columns`] in the next row (`NaN`
    /// where missing), `time` the next row's time.
    pub fn push_step(
        &self,
        fill: &mut Fill,
        now: &[f32],
        next: &[f32],
        time: f64,
        out: &mut Vec<f32>,
    ) {
        debug_assert_eq!(now.len(), self.now.len());
        debug_assert_eq!(next.len(), self.next.len());
        let filled = |last: &mut f32, v: f32| {
            if v.is_nan() {
                if last.is_nan() { 0.0 } else { *last }
            } else {
                *last = v;
                v
            }
        };
        for (last, &v) in fill.now.iter_mut().zip(now) {
            out.push(filled(last, v));
        }
        for (last, &v) in fill.next.iter_mut().zip(next) {
            out.push(filled(last, v));
        }
        for c in &self.calendar {
            out.extend(c.encode(time));
        }
        if self.flags {
            for &v in now.iter().chain(next) {
                out.push(if v.is_nan() { 0.0 } else { 1.0 });
            }
        }
    }

    /// Appends the inputs of steps `steps` of series `i` of `table`, all of whose rows (and the
    /// row after the last step) are in the table, scaled by `scaler`; `fill` carries on from the
    /// step before `steps.start`.
    pub fn push_table_steps(
        &self,
        table: &Table,
        scaler: &Scaler,
        i: usize,
        steps: std::ops::Range<usize>,
        fill: &mut Fill,
        out: &mut Vec<f32>,
    ) {
        let id = &table.ids[i];
        let stats = |cols: &[usize]| -> Vec<Stat> {
            cols.iter()
                .map(|&c| scaler.stat(id, &table.columns[c]))
                .collect()
        };
        let (sn, sx) = (stats(&self.now), stats(&self.next));
        let w = table.columns.len();
        let a = table.offsets[i];
        let (mut now, mut next) = (Vec::new(), Vec::new());
        for s in steps {
            let (r, q) = (a + s, a + s + 1);
            now.clear();
            now.extend(
                self.now
                    .iter()
                    .zip(&sn)
                    .map(|(&c, &st)| Scaler::apply(st, table.values[r * w + c])),
            );
            next.clear();
            next.extend(
                self.next
                    .iter()
                    .zip(&sx)
                    .map(|(&c, &st)| Scaler::apply(st, table.values[q * w + c])),
            );
            self.push_step(fill, &now, &next, table.times[q], out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::days_from_civil;

    fn at(y: i64, m: u32, d: u32, hour: f64) -> f64 {
        days_from_civil(y, m, d) as f64 * 86_400.0 + hour * 3600.0
    }

    fn angle(c: Calendar, t: f64) -> f64 {
        let [s, k] = c.encode(t);
        f64::from(s)
            .atan2(f64::from(k))
            .rem_euclid(std::f64::consts::TAU)
    }

    #[test]
    fn calendar_features_follow_the_civil_calendar() {
        let tau = std::f64::consts::TAU;
        // 2024-01-01 was a Monday, 2024-01-07 a Sunday
        assert!(angle(Calendar::Dow, at(2024, 1, 1, 0.0)).abs() < 1e-6);
        let sun = angle(Calendar::Dow, at(2024, 1, 7, 23.5));
        assert!((sun - 6.0 * tau / 7.0).abs() < 1e-6, "{sun}");
        assert!((angle(Calendar::Month, at(2023, 12, 31, 0.0)) - 11.0 * tau / 12.0).abs() < 1e-6);
        assert!((angle(Calendar::Month, at(2024, 3, 1, 0.0)) - 2.0 * tau / 12.0).abs() < 1e-6);
        assert!((angle(Calendar::Dom, at(2024, 2, 29, 0.0)) - 28.0 * tau / 31.0).abs() < 1e-6);
        assert!((angle(Calendar::Doy, at(2024, 12, 31, 0.0)) - 365.0 * tau / 365.25).abs() < 1e-6);
        assert!((angle(Calendar::Hour, at(2024, 5, 5, 18.5)) - 18.5 * tau / 24.0).abs() < 1e-5);
        // before 1970 too
        assert!(
            angle(Calendar::Dow, at(1969, 12, 29, 0.0)).abs() < 1e-6,
            "a Monday"
        );
        // neighbours in a cycle are neighbours in the encoding
        let dec = Calendar::Month.encode(at(2023, 12, 1, 0.0));
        let jan = Calendar::Month.encode(at(2024, 1, 1, 0.0));
        let jun = Calendar::Month.encode(at(2024, 6, 1, 0.0));
        let dist = |a: [f32; 2], b: [f32; 2]| (a[0] - b[0]).hypot(a[1] - b[1]);
        assert!(dist(dec, jan) < dist(dec, jun) / 3.0);
    }

    fn table(kind: TimeKind) -> Table {
        Table {
            source: "t.csv".into(),
            ids: vec!["a".into()],
            offsets: vec![0, 3],
            time_kind: kind,
            times: vec![
                at(2024, 1, 1, 0.0),
                at(2024, 1, 2, 0.0),
                at(2024, 1, 3, 0.0),
            ],
            columns: vec!["y".into(), "p".into(), "f".into()],
            values: vec![
                1.0,
                10.0,
                100.0,
                f32::NAN,
                20.0,
                f32::NAN,
                3.0,
                f32::NAN,
                300.0,
            ],
        }
    }

    fn spec() -> SeriesSpec {
        SeriesSpec {
            time_column: Some("day".into()),
            input_columns: vec!["y".into()],
            target_columns: vec!["y".into()],
            past_covariates: vec!["p".into()],
            future_covariates: vec!["f".into()],
            calendar: vec![Calendar::Dow],
            observed_flags: true,
            scale: super::super::Scale::None,
            ..SeriesSpec::default()
        }
    }

    #[test]
    fn a_step_reads_its_row_the_next_rows_covariates_and_time_and_flags() {
        let t = table(TimeKind::Date);
        let f = Features::new(&t, &spec()).unwrap();
        assert_eq!(f.width(), 3 + 2 + 3);
        let scaler = Scaler::fit(super::super::Scale::None, &t, &[3]);
        let mut fill = f.fill();
        let mut x = Vec::new();
        f.push_table_steps(&t, &scaler, 0, 0..2, &mut fill, &mut x);
        let tue = Calendar::Dow.encode(t.times[1]);
        let wed = Calendar::Dow.encode(t.times[2]);
        // step 0: y and p of row 0, f of row 1 (missing: nothing before it, so 0), Tuesday
        assert_eq!(x[..8], [1.0, 10.0, 0.0, tue[0], tue[1], 1.0, 1.0, 0.0]);
        // step 1: y of row 1 missing (1 carried), p of row 1, f of row 2, Wednesday
        assert_eq!(x[8..], [1.0, 20.0, 300.0, wed[0], wed[1], 0.0, 1.0, 1.0]);
    }

    #[test]
    fn a_roll_out_step_holds_past_covariates_and_takes_the_values_known_ahead() {
        let l = InputLayout::of(&spec());
        assert_eq!((l.width(), l.ahead()), (8, 3));
        let t = table(TimeKind::Date);
        assert_eq!(l.width(), Features::new(&t, &spec()).unwrap().width());
        let last = [1.0, 10.0, 300.0, 0.5, 0.5, 1.0, 1.0, 1.0];
        let mut x = Vec::new();
        l.roll_out_step(&[2.5], &last, &[7.0, 0.1, 0.9], &mut x);
        assert_eq!(x, [2.5, 10.0, 7.0, 0.1, 0.9, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn the_next_times_keep_calendar_months_and_otherwise_the_last_interval() {
        use super::super::next_time;
        let day = |y, m, d| at(y, m, d, 0.0);
        let monthly = [day(2023, 12, 1), day(2024, 1, 1)];
        let want: Vec<f64> = [(2024, 2), (2024, 3), (2024, 12), (2025, 1)]
            .iter()
            .map(|&(y, m)| day(y, m, 1))
            .collect();
        let got: Vec<f64> = [1, 2, 11, 12]
            .iter()
            .map(|&k| next_time(TimeKind::Date, &monthly, k))
            .collect();
        assert_eq!(got, want);
        let quarterly = [day(2023, 11, 15), day(2024, 2, 15)];
        assert_eq!(next_time(TimeKind::Date, &quarterly, 2), day(2024, 8, 15));
        // daily, weekly, hourly and numbers: the last interval
        let daily = [day(2024, 1, 30), day(2024, 1, 31)];
        assert_eq!(next_time(TimeKind::Date, &daily, 1), day(2024, 2, 1));
        let hourly = [at(2024, 1, 1, 22.0), at(2024, 1, 1, 23.0)];
        assert_eq!(
            next_time(TimeKind::DateTime, &hourly, 2),
            at(2024, 1, 2, 1.0)
        );
        assert_eq!(next_time(TimeKind::Number, &[3.0, 5.0], 3), 11.0);
        assert_eq!(
            next_time(TimeKind::Date, &[day(2024, 1, 1)], 2),
            day(2024, 1, 3)
        );
    }

    #[test]
    fn calendar_features_need_dates_and_hours_need_date_times() {
        for (kind, want) in [
            (TimeKind::Number, "numbers"),
            (TimeKind::Index, "--time-column"),
        ] {
            let e = Features::new(&table(kind), &spec())
                .unwrap_err()
                .to_string();
            assert!(e.contains("--calendar dow") && e.contains(want), "{e}");
        }
        let hour = SeriesSpec {
            calendar: vec![Calendar::Hour],
            ..spec()
        };
        let e = Features::new(&table(TimeKind::Date), &hour)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--calendar hour") && e.contains("date-times") && e.contains("\"day\""),
            "{e}"
        );
        assert!(Features::new(&table(TimeKind::DateTime), &hour).is_ok());
    }

    #[test]
    fn a_column_has_one_role() {
        let mut s = spec();
        assert_eq!(s.check_roles(), Ok(()));
        s.future_covariates = vec!["p".into()];
        let (field, e) = s.check_roles().unwrap_err();
        assert_eq!(field, "future_covariates");
        assert!(
            e.contains("\"p\"")
                && e.contains("--past-covariates")
                && e.contains("--future-covariates"),
            "{e}"
        );
        let mut s = spec();
        s.past_covariates = vec!["y".into()];
        let (_, e) = s.check_roles().unwrap_err();
        assert!(
            e.contains("--input-columns") && e.contains("--past-covariates"),
            "{e}"
        );
        let mut s = spec();
        s.calendar = vec![Calendar::Dow, Calendar::Dow];
        assert!(s.check_roles().unwrap_err().1.contains("--calendar"));
    }
}
